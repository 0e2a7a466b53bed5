"""Prepare a demo instance: an `admin` superuser, the examples imported, optionally a live run.

`make run` calls this between `migrate` and `daphne`. Each step is idempotent: the admin is
created once, an example is imported again only when its file changed, and `--start-run`
lays out a new run of the demo example and starts a detached executor for it.
"""

import json
import os
import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from executions import services
from waves.loaders import DefinitionError, load_path
from waves.models import TaskList
from waves.services import task_list_import

ADMIN_USERNAME = "admin"
EXAMPLES_DIR = settings.BASE_DIR / "examples"
# The example started with --start-run: the newcomer's first page is a live run of it.
# Seed 003's multi-platform pipeline, simulated at one second per minute: about two minutes of
# waves, concurrent groups and agents to watch (the ETL example is over in a few seconds).
DEMO_RUN_EXAMPLE = "multi_platform.pipeline"
DEMO_RUN_SIMULATE = 1.0


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
        run_note = self.start_run(imported.get(DEMO_RUN_EXAMPLE), options["url"]) if options["start_run"] else None
        self.print_summary(options["url"], created, password_set, from_env=password is not None)
        if run_note:
            self.stdout.write(run_note)

    # --- examples ------------------------------------------------------------------------

    def import_examples(self, directory: Path) -> dict[str, TaskList]:
        """Import each example that is new or changed since it was imported (the live list of
        its name is archived and replaced); returns {file name: live task list}."""
        files = example_files(directory)
        if not files:
            self.stdout.write(f"Examples: none found in {directory}.")
            return {}
        lists = {}
        for path in files:
            try:
                definition = load_path(path)
                live = TaskList.objects.filter(title=definition.name, archived_at__isnull=True).first()
                if live is not None and same_definition(live.definition, definition.to_json()):
                    lists[path.name] = live
                    self.stdout.write(f"Examples: {path.name} unchanged (task list {live.pk})")
                    continue
                tl = task_list_import(definition=definition, replace=True, source_path=str(path))
            except DefinitionError as exc:  # one bad file never stops the demo
                self.stderr.write(f"Examples: {path.name} not imported: {exc}")
                continue
            lists[path.name] = tl
            self.stdout.write(f"Examples: imported {path.name} (task list {tl.pk})")
        return lists

    # --- background run --------------------------------------------------------------------

    def start_run(self, task_list: TaskList | None, admin_url: str) -> str:
        if task_list is None:
            return f"Demo run: skipped (examples/{DEMO_RUN_EXAMPLE} was not imported)."
        run = services.run_start(task_list, simulate=DEMO_RUN_SIMULATE)
        pid = services.run_spawn(run)
        log = Path(settings.VAR_DIR) / "runs" / f"run-{run.pk}.log"
        return (
            f"Demo run: run {run.pk} of {task_list.title} started (executor pid {pid}, log {log}).\n"
            f"  Watch it live:  {admin_url.rstrip('/')}/dashboards/runs/{run.pk}/\n"
            f"  or in a shell:  python manage.py run_status {run.pk} --watch"
        )
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


def same_definition(stored: dict, new: dict) -> bool:
    """Whether an example's file still holds what was imported (where it was read from aside)."""
    drop = {"source"}
    return {k: v for k, v in stored.items() if k not in drop} == {
        k: v for k, v in json_roundtrip(new).items() if k not in drop
    }


def json_roundtrip(value: dict) -> dict:
    """As a JSON column gives it back (tuples become lists, and so on)."""
    return json.loads(json.dumps(value))
