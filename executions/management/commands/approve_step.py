"""python manage.py approve_step RUN_ID STEP [--reject] [--by USER]

Exit 0 when the decision is recorded; 2 when RUN_ID is not a run id, the run or the step
does not exist, or the step cannot be decided (not an approval step, already decided or
finished): bad arguments and something not found exit 2 in every command.
"""

import getpass

from django.core.management.base import BaseCommand, CommandError

from executions import services
from executions.errors import ServiceError
from executions.management.commands.run_status import run_id_argument
from executions.selectors import run_get


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry (some containers)
        return "approve_step"


class Command(BaseCommand):
    help = "Approve (or reject) an approval step of a run."

    def add_arguments(self, parser):
        parser.add_argument("run_id", type=run_id_argument)
        parser.add_argument("step", help="step key, e.g. publish or per_region[2]")
        parser.add_argument("--reject", action="store_true")
        parser.add_argument("--by", default="", help="who decides (default: the current OS user)")

    def handle(self, *args, run_id, step, reject, by, **opts):
        actor = by or _os_user()
        try:
            run = run_get(run_id)
            wt = services.step_decide(run, step, approve=not reject, actor=actor)
        except ServiceError as exc:  # NotFound (run or step) included
            raise CommandError(str(exc), returncode=2) from None
        self.stdout.write(f"step {step} of run {run.pk} {wt.approval_decision} by {actor}")
