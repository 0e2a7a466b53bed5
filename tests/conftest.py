import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def database_url_of_current_connection() -> str:
    """The URL of the database the tests use now (test_*), for child processes."""
    s = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{s['NAME']}"
    auth = s["USER"] + (f":{s['PASSWORD']}" if s["PASSWORD"] else "")
    return f"postgres://{auth}@{s['HOST'] or 'localhost'}:{s['PORT'] or 5432}/{s['NAME']}"


@pytest.fixture
def child_env(tmp_path):
    """Environment for a child `manage.py` process that shares this test's database."""
    env = dict(os.environ)
    env["DATABASE_URL"] = database_url_of_current_connection()
    env["TIDEWATCH_VAR_DIR"] = str(tmp_path / "var")
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def manage(child_env):
    """Run `python manage.py ...` in a child process against the test database."""

    def run(*args, timeout=120, check=False, **kwargs):
        proc = subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), *map(str, args)],
            env=child_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
            **kwargs,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"manage.py {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr}"
            )
        return proc

    return run


@pytest.fixture(autouse=True)
def _work_dir(settings, tmp_path):
    settings.TIDEWATCH = {**settings.TIDEWATCH, "WORK_DIR": tmp_path / "work"}


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    """Test users' passwords need no slow hash (PBKDF2 costs ~0.3 s a user on this machine)."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


# --- how many cases schemathesis generated (tests/api/test_schema_fuzz.py), in the summary ------
# The fuzz test records its count as a user property; reports carry those across pytest-xdist
# workers, so the total is printed by whichever process writes the summary.

_schemathesis_cases: dict[str, int] = {}


def pytest_runtest_logreport(report):
    if report.when == "teardown":
        for name, value in report.user_properties:
            if name == "schemathesis_cases":
                _schemathesis_cases[report.nodeid] = value


def pytest_terminal_summary(terminalreporter):
    if _schemathesis_cases:
        total = sum(_schemathesis_cases.values())
        each = ", ".join(
            f"{nodeid.rsplit('[', 1)[-1].rstrip(']')} {count}" for nodeid, count in sorted(_schemathesis_cases.items())
        )
        terminalreporter.write_sep("-", f"schemathesis generated {total} cases ({each})")
