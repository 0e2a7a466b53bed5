"""python manage.py prune_audit [--days DAYS] [--batch-size ROWS] [--dry-run]

Deletes task status audit rows and event-log rows older than DAYS days (default: the
TIDEWATCH_AUDIT_RETENTION_DAYS setting, 90), in short batches, while executors go on
writing (see executions.retention for what is kept and why). Prints the rows deleted per
table, the batches and the seconds; --dry-run only counts.

Exit 0 when done; 2 on a bad argument (DAYS or ROWS not a whole number of at least 1).
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from executions import retention
from executions.records import iso

MAX_DAYS = 36_500  # a hundred years: any longer reaches before year 1


def whole_number(name: str, raw, maximum: int) -> int:
    text = str(raw).strip()
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= maximum):
        raise CommandError(f"{name} must be a whole number from 1 to {maximum}, not {raw!r}", returncode=2)
    return int(text)


class Command(BaseCommand):
    help = "Delete task status audit and event-log rows older than the retention window."

    def add_arguments(self, parser):
        parser.add_argument(
            "--days", default=None, help="keep this many days (default: TIDEWATCH_AUDIT_RETENTION_DAYS)"
        )
        parser.add_argument(
            "--batch-size", default=retention.BATCH_SIZE, help="rows per batch (one short transaction each)"
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="count what would be deleted; delete nothing"
        )

    def handle(self, *args, days, batch_size, dry_run, **opts):
        if days is None:
            days = settings.TIDEWATCH["AUDIT_RETENTION_DAYS"]
        days = whole_number("--days", days, MAX_DAYS)
        batch_size = whole_number("--batch-size", batch_size, 1_000_000)
        cutoff = timezone.now() - timedelta(days=days)
        done = retention.prune(cutoff, batch_size=batch_size, dry_run=dry_run)
        verb = "would delete" if dry_run else "deleted"
        self.stdout.write(f"cut-off {iso(cutoff)} ({days} days)")
        self.stdout.write(f"task status audit: {verb} {done.audit} rows")
        self.stdout.write(f"event log: {verb} {done.events} rows")
        self.stdout.write(f"{done.batches} batches in {done.seconds:.2f} s")
