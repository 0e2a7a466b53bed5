"""The audit and event rows a change leaves are the same whichever way they are written:
at once or gathered by `records.batch()`, with COPY (PostgreSQL) or with bulk_create."""

from contextlib import nullcontext
from datetime import UTC, datetime, timedelta

import pytest
from django.db import transaction

from executions import records, services, transitions
from executions.models import BuildAgentInstance, Event, TaskStatus, TaskStatusAudit, WaveTask
from tests.factories import run_with_waves, task_list

pytestmark = pytest.mark.django_db

T0 = datetime(2100, 3, 1, 12, 0, tzinfo=UTC)  # after the rows laid out with the run
# Characters COPY's text format escapes, and some beyond ASCII.
REASON = 'tab\there, new\nline, back\\slash, "quoted", \\N, é ✓'


def changes(run) -> None:
    """The same moves for every run: a few tasks at once, with and without reason or actor,
    and an agent's start (an event written from an Event object)."""
    a, b, c = WaveTask.objects.filter(execution=run).order_by("key")
    services.transition([a, b], TaskStatus.QUEUED, expected=TaskStatus.PENDING, now=T0, actor="ann")
    services.transition(
        [a, b], TaskStatus.RUNNING, expected=TaskStatus.QUEUED, now=T0 + timedelta(seconds=2), reason=REASON
    )
    services.transition(c, TaskStatus.SKIPPED, expected=TaskStatus.PENDING, now=T0 + timedelta(seconds=1))
    agent = BuildAgentInstance(
        execution=run, wave=a.wave, wave_task=a, task=a.task, instance_id=f"i-{run.pk}", started_at=T0
    )
    transitions.agents_start([agent])


def written(run) -> tuple[list, list]:
    """The run's audit and event rows from T0 on, in id order, with the run's own ids replaced by keys."""
    keys = dict(WaveTask.objects.filter(execution=run).values_list("pk", "key"))
    audit = [
        (
            keys[r.wave_task_id],
            r.task.key,
            r.attempt,
            r.previous_status,
            r.new_status,
            r.changed_at,
            r.actor,
            r.reason,
        )
        for r in TaskStatusAudit.objects.filter(execution=run, changed_at__gte=T0)
        .select_related("task")
        .order_by("id")
    ]
    events = []
    for e in Event.objects.filter(execution=run, created_at__gte=T0).order_by("id"):
        payload = {k: v for k, v in e.payload.items() if not k.endswith("_id")}
        events.append((e.type, payload, e.created_at))
    return audit, events


COPY_OR_BULK_CREATE = records._insert


@pytest.mark.parametrize("in_batch", [False, True], ids=["at-once", "batch"])
def test_copy_and_bulk_create_write_the_same_rows_at_once_and_in_a_batch(in_batch, monkeypatch):
    def make(insert):
        monkeypatch.setattr(records, "_insert", insert)
        run = run_with_waves(task_list(title=f"etl-{insert.__name__}"), [["a", "b"], ["c"]])
        with transaction.atomic(), records.batch() if in_batch else nullcontext():
            changes(run)
        return written(run)

    reference = make(records._bulk_create)
    audit, events = reference
    assert len(audit) == 5 and len(events) == 5 + 1
    assert audit[-1][-1] == REASON or audit[-2][-1] == REASON
    assert make(COPY_OR_BULK_CREATE) == reference  # COPY on PostgreSQL
