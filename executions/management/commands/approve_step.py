"""python manage.py approve_step RUN_ID STEP [--reject] [--by USER]"""

import getpass

from django.core.management.base import BaseCommand, CommandError

from executions import services
from executions.models import ExecutionRun


class Command(BaseCommand):
    help = "Approve (or reject) an approval step of a run."

    def add_arguments(self, parser):
        parser.add_argument("run_id", type=int)
        parser.add_argument("step", help="step key, e.g. publish or per_region[2]")
        parser.add_argument("--reject", action="store_true")
        parser.add_argument("--by", default="", help="who decides (default: the current OS user)")

    def handle(self, *args, run_id, step, reject, by, **opts):
        run = ExecutionRun.objects.filter(pk=run_id).first()
        if run is None:
            raise CommandError(f"run {run_id} does not exist", returncode=2)
        actor = by or getpass.getuser()
        try:
            wt = services.step_decide(run, step, approve=not reject, actor=actor)
        except services.ServiceError as exc:
            raise CommandError(str(exc), returncode=1)
        self.stdout.write(f"step {step} of run {run_id} {wt.approval_decision} by {actor}")
