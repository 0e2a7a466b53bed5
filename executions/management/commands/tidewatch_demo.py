"""Prepare a demo instance: an `admin` superuser, the examples imported, optionally a live run.

`make run` calls this between `migrate` and `daphne`. Each step is idempotent, and each step
that depends on a command another part of the project provides (`import_tasklist`,
`run_tasklist`) is skipped with a message while that command does not exist.
"""

import os
import re
import secrets
import subprocess
import sys
from io import StringIO
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command, get_commands
from django.core.management.base import BaseCommand

ADMIN_USERNAME = "admin"
EXAMPLES_DIR = settings.BASE_DIR / "examples"
# The example started with --start-run: the newcomer's first page is a live run of it.
# Seed 003's multi-platform pipeline, simulated at one second per minute: about two minutes of
# waves, concurrent groups and agents to watch (the ETL example is over in a few seconds).
DEMO_RUN_EXAMPLE = "multi_platform.pipeline"
DEMO_RUN_ARGS = ["--simulate", "1"]


def admin_ensure(*, password: str | None) -> tuple[bool, str | None]:
    """Create or update the `admin` superuser.

    Returns (created, password_set): the password is set from `password` when given, generated
    when the user is new, and left alone otherwise (None).
    """
    User = get_user_model()
    user, created = User.objects.get_or_create(
        username=ADMIN_USERNAME, defaults={"email": "admin@example.com"}
    )
    user.is_staff = user.is_superuser = user.is_active = True
    if password is None and created:
        password = secrets.token_urlsafe(12)
    if password is not None:
        user.set_password(password)
    user.save()
    return created, password


def example_files(directory: Path) -> list[Path]:
    """Every workflow file or pipeline table in `directory` (not hidden files or READMEs)."""
    if not directory.is_dir():
        return []
    return sorted(
        p
        for p in directory.iterdir()
        if p.is_file() and not p.name.startswith(".") and not p.stem.lower().startswith("readme")
    )


def command_exists(name: str) -> bool:
    return name in get_commands()


class Command(BaseCommand):
    help = (
        "Create or update the 'admin' superuser (password from TIDEWATCH_ADMIN_PASSWORD, else "
        "generated once and printed), import every file in examples/ and, with --start-run, start "
        "a background run of examples/multi_platform.pipeline (simulated)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--start-run",
            action="store_true",
            help="Start a background run of examples/multi_platform.pipeline (simulated).",
        )
        parser.add_argument("--url", default="http://127.0.0.1:8000/admin/", help="The admin URL to print.")
        parser.add_argument("--examples", default=str(EXAMPLES_DIR), help="Directory of examples to import.")

    def handle(self, *args, **options):
        password = os.environ.get("TIDEWATCH_ADMIN_PASSWORD") or None
        created, password_set = admin_ensure(password=password)
        imported = self.import_examples(Path(options["examples"]))
        run_note = self.start_run(imported) if options["start_run"] else None
        self.print_summary(options["url"], created, password_set, from_env=password is not None)
        if run_note:
            self.stdout.write(run_note)

    # --- examples ------------------------------------------------------------------------

    def import_examples(self, directory: Path) -> dict[str, str]:
        """Import each example with `import_tasklist PATH --replace`; return {file name: id}."""
        if not command_exists("import_tasklist"):
            self.stdout.write("Examples: skipped (the import_tasklist command is not available yet).")
            return {}
        files = example_files(directory)
        if not files:
            self.stdout.write(f"Examples: none found in {directory}.")
            return {}
        imported = {}
        for path in files:
            out = StringIO()
            try:
                call_command("import_tasklist", str(path), "--replace", stdout=out, stderr=StringIO())
            except (Exception, SystemExit) as exc:  # one bad file never stops the demo
                self.stderr.write(f"Examples: {path.name} not imported: {exc}")
                continue
            ident = printed_id(out.getvalue())
            imported[path.name] = ident or path.stem
            self.stdout.write(f"Examples: imported {path.name}" + (f" (task list {ident})" if ident else ""))
        return imported

    # --- background run --------------------------------------------------------------------

    def start_run(self, imported: dict[str, str]) -> str:
        if not command_exists("run_tasklist"):
            return "Demo run: skipped (the run_tasklist command is not available yet)."
        if DEMO_RUN_EXAMPLE not in imported:
            return f"Demo run: skipped (examples/{DEMO_RUN_EXAMPLE} was not imported)."
        log_path = Path(settings.VAR_DIR) / "demo-run.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            # Detached: its own session, so it outlives this command and ignores the terminal's ^C.
            proc = subprocess.Popen(
                [sys.executable, "manage.py", "run_tasklist", imported[DEMO_RUN_EXAMPLE], *DEMO_RUN_ARGS],
                cwd=settings.BASE_DIR,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return f"Demo run: started run_tasklist {imported[DEMO_RUN_EXAMPLE]} (pid {proc.pid}), log {log_path}"

    # --- output ---------------------------------------------------------------------------

    def print_summary(self, url: str, created: bool, password: str | None, *, from_env: bool):
        if password is None:
            shown = "(unchanged; set TIDEWATCH_ADMIN_PASSWORD to reset it)"
        elif from_env:
            shown = "(from TIDEWATCH_ADMIN_PASSWORD)"
        else:
            shown = f"{password}   <- generated now and shown only once"
        self.stdout.write("")
        self.stdout.write("=" * 72)
        self.stdout.write(f"  Tidewatch admin:  {url}")
        self.stdout.write(f"  username:         {ADMIN_USERNAME}" + ("  (created)" if created else ""))
        self.stdout.write(f"  password:         {shown}")
        self.stdout.write("=" * 72)
        self.stdout.write("")


def printed_id(text: str) -> str | None:
    """The id `import_tasklist` prints: the first line that is a bare number."""
    found = re.search(r"^\s*(\d+)\s*$", text, re.MULTILINE)
    return found.group(1) if found else None
