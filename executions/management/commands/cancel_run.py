"""python manage.py cancel_run RUN_ID [--by USER] [--no-wait] [--timeout SECONDS]

Records a cancel request on the run; the executor that owns it, in whatever process or
machine, stops launching and terminates its tasks within a second. Waits (up to 10 s)
until the run is closed and says how it ended.

Exit 0 when the cancel is recorded (and, unless --no-wait, the run closed); 2 when RUN_ID is
not a run id, the run does not exist or has already ended (a request that cannot be carried
out, as in every command); 1 when the executor has not closed the run within the timeout.
"""

import argparse
import math
import time

from django.core.management.base import BaseCommand, CommandError

from executions import services
from executions.errors import ServiceError
from executions.management.commands.run_status import run_id_argument
from executions.models import RunStatus
from executions.selectors import run_get


def timeout_argument(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not (math.isfinite(number) and 0 <= number <= 3600):
        raise argparse.ArgumentTypeError("must be a number of seconds from 0 to 3600")
    return number


class Command(BaseCommand):
    help = "Cancel a run, wherever its executor runs."

    def add_arguments(self, parser):
        parser.add_argument("run_id", type=run_id_argument)
        parser.add_argument("--by", default="", help="who cancels (recorded in the audit)")
        parser.add_argument(
            "--no-wait", action="store_true", help="do not wait for the executor to close the run"
        )
        parser.add_argument("--timeout", type=timeout_argument, default=10.0)

    def handle(self, *args, run_id, by, no_wait, timeout, **opts):
        try:
            run = run_get(run_id)
            accepted = services.run_request_cancel(run, actor=by or "cancel_run")
        except ServiceError as exc:  # NotFound included
            raise CommandError(str(exc), returncode=2) from None
        if not accepted:
            raise CommandError(f"run {run.pk} already ended ({run.status})", returncode=2)
        if no_wait:
            self.stdout.write(f"cancel of run {run.pk} requested")
            return
        deadline = time.monotonic() + timeout
        while True:
            run.refresh_from_db()
            if run.status in RunStatus.terminal():
                self.stdout.write(f"run {run.pk} {run.status}")
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        raise CommandError(
            f"cancel of run {run.pk} requested, but its executor has not closed it yet", returncode=1
        )
