"""Retention: delete task status audit rows and event-log rows older than a cut-off.

**What goes.** Every event-log row created before the cut-off. Every audit row changed
before the cut-off, except, for each wave task, its last row before the cut-off when that
row enters an unfinished status (pending, queued, waiting for approval, running): the task
was still in that status at the cut-off, and the row keeps when it entered it. The
concurrency timeline counts an instant from the wave tasks' statuses now and the rows after
that instant (concurrency.selectors), so its counts at and after the cut-off are the same
after a prune; the kept rows also leave the audit of a long-running task its start.

**How.** In batches of `batch_size` consecutive rows in primary-key order, each its own short
transaction: a batch reads the next ids through the primary key, then deletes those of its
id range that go. Nothing else is locked, and nothing waits on a writer: executors only
insert rows (changed or created now, after any cut-off), and a batch deletes only rows
older than the cut-off, so both run at once. Ids above the newest row older than the
cut-off are never visited. (Finding that row reads the audit's index on `changed_at`; the
event log has no index on `created_at`, so for events it is one sequential read.)

Event clients that resume after an id older than the oldest kept event (`?after=N` on the
event-log endpoint or the websockets) get every kept event after N: the pruned ones are
gone, nothing fails.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.db.models import Exists, Max, OuterRef, Q

from executions.models import Event, TaskStatusAudit
from executions.transitions import UNFINISHED

BATCH_SIZE = 5000


@dataclass
class Pruned:
    audit: int = 0  # audit rows deleted (or, in a dry run, that would be)
    events: int = 0  # event-log rows deleted
    batches: int = 0
    seconds: float = 0.0


def audit_prunable(cutoff: datetime):
    """The audit rows a prune at `cutoff` deletes."""
    later = TaskStatusAudit.objects.filter(
        wave_task_id=OuterRef("wave_task_id"), pk__gt=OuterRef("pk"), changed_at__lt=cutoff
    )
    return TaskStatusAudit.objects.filter(changed_at__lt=cutoff).filter(
        ~Q(new_status__in=UNFINISHED) | Exists(later)
    )


def prune(cutoff: datetime, *, batch_size: int = BATCH_SIZE, dry_run: bool = False) -> Pruned:
    """Delete (or, with `dry_run`, count) the audit and event rows older than `cutoff`."""
    started = time.monotonic()
    old_audit = TaskStatusAudit.objects.filter(changed_at__lt=cutoff)
    old_events = Event.objects.filter(created_at__lt=cutoff)
    result = Pruned()
    if dry_run:
        result.audit, result.events = audit_prunable(cutoff).count(), old_events.count()
    else:
        result.audit, audit_batches = _delete_in_batches(old_audit, audit_prunable(cutoff), batch_size)
        result.events, event_batches = _delete_in_batches(old_events, old_events, batch_size)
        result.batches = audit_batches + event_batches
    result.seconds = time.monotonic() - started
    return result


def _delete_in_batches(old, prunable, batch_size: int) -> tuple[int, int]:
    """Delete the rows of `prunable` (some of `old`), `batch_size` consecutive ids at a time,
    up to the newest of `old`: (rows deleted, batches)."""
    high = old.aggregate(high=Max("pk"))["high"]
    deleted = batches = last = 0
    while high is not None and last < high:
        ids = list(
            old.model.objects.filter(pk__gt=last, pk__lte=high)
            .order_by("pk")
            .values_list("pk", flat=True)[:batch_size]
        )
        if not ids:  # deleted meanwhile (another prune, a run deleted)
            break
        with transaction.atomic():
            count, _ = prunable.filter(pk__gte=ids[0], pk__lte=ids[-1]).delete()
        deleted += count
        batches += 1
        last = ids[-1]
    return deleted, batches
