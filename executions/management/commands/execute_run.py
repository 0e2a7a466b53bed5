"""python manage.py execute_run RUN_ID [--json]

Runs a run that was laid out elsewhere (the admin, the API, `tidewatch_demo`) and waits for
an executor: executions.services.run_spawn starts this command detached. Claims the run
(refused if another executor has it), runs it like run_tasklist, prints the summary.
"""

import json
import sys

from django.core.management.base import BaseCommand, CommandError

from executions import services
from executions.management.commands.run_tasklist import describe, execute, run_id
from executions.models import RunStatus


class Command(BaseCommand):
    help = "Execute a laid-out run (started by the admin, the API or the demo)."

    def add_arguments(self, parser):
        parser.add_argument("run_id", type=run_id)
        parser.add_argument("--json", action="store_true", help="print one JSON summary")

    def handle(self, *args, run_id, **opts):
        try:
            run = services.run_get(run_id)
        except services.NotFound as exc:
            raise CommandError(str(exc), returncode=2)
        summary = execute(run, self, progress=False)
        self.stdout.write(json.dumps(summary.as_dict()) if opts["json"] else describe(summary))
        if summary.status != RunStatus.SUCCEEDED:
            sys.exit(1)
