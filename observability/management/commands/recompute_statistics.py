"""python manage.py recompute_statistics [--execution ID]

Rebuilds every wave_statistics row (of one run, or of all) from the raw rows: wave
tasks, transcript entries, tool uses, assertions, skill traces and wave timing. The
signal handlers keep the same rows current as runs go; this is the repair and the check.
"""

from django.core.management.base import BaseCommand, CommandError

from executions.models import ExecutionRun
from observability import services


class Command(BaseCommand):
    help = "Rebuild wave statistics from the raw rows."

    def add_arguments(self, parser):
        parser.add_argument("--execution", type=int, metavar="ID", help="only the waves of this run")

    def handle(self, *args, execution=None, **opts):
        if execution is not None and not ExecutionRun.objects.filter(pk=execution).exists():
            raise CommandError(f"run {execution} does not exist", returncode=2)
        rows = services.statistics_recompute(execution_id=execution)
        runs = len({row.execution_id for row in rows})
        self.stdout.write(f"recomputed statistics of {len(rows)} wave(s) in {runs} run(s)")
