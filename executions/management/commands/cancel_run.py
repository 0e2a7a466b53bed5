"""python manage.py cancel_run RUN_ID [--by USER] [--no-wait]

Records a cancel request on the run; the executor that owns it, in whatever process or
machine, stops launching and terminates its tasks within a second. Waits (up to 10 s)
until the run is closed and says how it ended.
"""

import time

from django.core.management.base import BaseCommand, CommandError

from executions import services
from executions.models import ExecutionRun, RunStatus


class Command(BaseCommand):
    help = "Cancel a run, wherever its executor runs."

    def add_arguments(self, parser):
        parser.add_argument("run_id", type=int)
        parser.add_argument("--by", default="", help="who cancels (recorded in the audit)")
        parser.add_argument(
            "--no-wait", action="store_true", help="do not wait for the executor to close the run"
        )
        parser.add_argument("--timeout", type=float, default=10.0)

    def handle(self, *args, run_id, by, no_wait, timeout, **opts):
        run = ExecutionRun.objects.filter(pk=run_id).first()
        if run is None:
            raise CommandError(f"run {run_id} does not exist", returncode=2)
        if not services.run_request_cancel(run, actor=by or "cancel_run"):
            raise CommandError(f"run {run_id} already ended ({run.status})", returncode=1)
        if no_wait:
            self.stdout.write(f"cancel of run {run_id} requested")
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run.refresh_from_db()
            if run.status in RunStatus.terminal():
                self.stdout.write(f"run {run_id} {run.status}")
                return
            time.sleep(0.1)
        raise CommandError(
            f"cancel of run {run_id} requested, but its executor has not closed it yet", returncode=1
        )
