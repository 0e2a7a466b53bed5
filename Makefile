# Tidewatch: `make run` serves a demo on http://127.0.0.1:8000/admin/, `make test` runs the suite.
# Needs only Python 3.11 (python3.11 or python3 on PATH) and make.

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3 2>/dev/null)
VENV ?= .venv
VPY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=

.PHONY: install run test lint

# The venv is (re)installed when pyproject.toml changes; the stamp records the last install.
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.11 not found: put python3.11 or python3 on PATH" >&2; exit 1; }
	@"$(PYTHON)" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "$(PYTHON) is older than Python 3.11" >&2; exit 1; }
	test -x $(VPY) || "$(PYTHON)" -m venv $(VENV)
	@echo '*' > $(VENV)/.gitignore
	$(VPY) -m pip install --quiet -e '.[test]'
	@touch $@

# The main job: migrate, prepare the demo (admin user, examples, a live run), serve with daphne.
run: install
	@mkdir -p "$${TIDEWATCH_VAR_DIR:-var}"
	$(VPY) manage.py migrate --noinput
	$(VPY) manage.py tidewatch_demo --start-run --url http://$(HOST):$(PORT)/admin/
	@echo "Serving on http://$(HOST):$(PORT)/admin/ (Ctrl-C stops)"
	$(VENV)/bin/daphne -b $(HOST) -p $(PORT) config.asgi:application

# The whole suite, on SQLite unless DATABASE_URL says otherwise, with a private var dir.
# pytest's exit code 5 (no test collected) is a failure here, never a silent pass.
test: install
	@var=$$(mktemp -d "$${TMPDIR:-/tmp}/tidewatch-test.XXXXXX"); \
	echo "TIDEWATCH_VAR_DIR=$$var DATABASE_URL=$${DATABASE_URL:-(sqlite in var dir)} REDIS_URL=$${REDIS_URL:-(in-memory layer)}"; \
	TIDEWATCH_VAR_DIR=$$var $(VPY) -m pytest -n 2 -q $(PYTEST_ARGS); rc=$$?; \
	rm -rf "$$var"; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: that is a failure" >&2; exit 1; fi; \
	exit $$rc

lint: install
	$(VENV)/bin/ruff check --extend-exclude '$(VENV)' .

# The browser libraries of the dashboards, from the npm registry, as listed (with their
# versions) in observability/static/tidewatch/vendor/VERSIONS.
VENDOR := observability/static/tidewatch/vendor
.PHONY: vendor
vendor:
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	grep -v '^#' $(VENDOR)/VERSIONS | while read -r pkg ver files; do \
		[ -n "$$pkg" ] || continue; \
		echo "$$pkg $$ver"; \
		curl -fsSL "https://registry.npmjs.org/$$pkg/-/$$pkg-$$ver.tgz" | tar -xz -C "$$tmp"; \
		rm -rf $(VENDOR)/$$pkg; mkdir -p $(VENDOR)/$$pkg; \
		for f in $$files; do cp "$$tmp/package/$$f" $(VENDOR)/$$pkg/; done; \
		rm -rf "$$tmp/package"; \
	done
