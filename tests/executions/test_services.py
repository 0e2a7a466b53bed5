from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from executions import services, transitions
from executions.models import ConcurrentExecutionSession, Event, TaskStatus, TaskStatusAudit, WaveTask
from tests.factories import run_with_waves, task_list

pytestmark = pytest.mark.django_db


def replay(wave_task) -> str | None:
    status = None
    for row in TaskStatusAudit.objects.filter(wave_task=wave_task).order_by("id"):
        assert row.previous_status == status, "audit has a gap"
        status = row.new_status
    return status


def test_transition_writes_status_audit_and_event_together():
    run = run_with_waves(task_list(), [["a", "b"], ["c"]])
    wt = WaveTask.objects.get(execution=run, key="a")
    changed = services.transition(wt, TaskStatus.RUNNING, expected=TaskStatus.PENDING, reason="started")
    assert changed == [wt]
    wt.refresh_from_db()
    assert wt.status == TaskStatus.RUNNING
    audit = TaskStatusAudit.objects.filter(wave_task=wt).order_by("id")
    assert [(a.previous_status, a.new_status) for a in audit] == [(None, "pending"), ("pending", "running")]
    assert Event.objects.filter(type="task.update", payload__wave_task_id=wt.pk).count() == 2
    assert replay(wt) == TaskStatus.RUNNING


def test_transition_moves_only_rows_in_the_expected_status_and_reports_the_others():
    run = run_with_waves(task_list(), [["a", "b"]])
    a, b = WaveTask.objects.filter(execution=run).order_by("key")
    services.transition(a, TaskStatus.RUNNING, expected=TaskStatus.PENDING)
    stale_a = WaveTask.objects.get(pk=a.pk)
    stale_a.status = TaskStatus.PENDING  # what a process that read it earlier believes
    changed = services.transition([stale_a, b], TaskStatus.QUEUED, expected=TaskStatus.PENDING)
    assert [wt.key for wt in changed] == ["b"]
    assert changed.lost == [(stale_a, TaskStatus.RUNNING)] and stale_a.status == TaskStatus.RUNNING
    assert replay(WaveTask.objects.get(pk=a.pk)) == TaskStatus.RUNNING
    assert replay(WaveTask.objects.get(pk=b.pk)) == TaskStatus.QUEUED


def test_a_batch_writes_audit_events_and_session_peaks_in_time_order():
    run = run_with_waves(task_list(), [["a", "b"], ["c"]])
    session = services.session_join(run, timezone.now())
    a, b, c = WaveTask.objects.filter(execution=run).order_by("key")
    services.transition([a, b], TaskStatus.RUNNING, expected=TaskStatus.PENDING)  # outside a batch: at once
    t1 = timezone.now() + timedelta(seconds=1)
    t2 = t1 + timedelta(seconds=1)
    first_event = Event.objects.order_by("-id").values_list("id", flat=True).first()
    with transaction.atomic(), services.batch():
        # Called out of order: c starts (t2) before a and b are recorded as done (t1).
        services.transition(c, TaskStatus.RUNNING, expected=TaskStatus.PENDING, now=t2)
        services.transition([a, b], TaskStatus.SUCCEEDED, expected=TaskStatus.RUNNING, now=t1)
        assert not Event.objects.filter(id__gt=first_event).exists()  # not written yet
    session = ConcurrentExecutionSession.objects.get(pk=session.pk)
    # Two ran at once, never three: a and b ended (t1) before c started (t2).
    assert (session.running_tasks, session.peak_concurrent_tasks) == (1, 2)
    audit = TaskStatusAudit.objects.filter(execution=run, changed_at__gte=t1).order_by("id")
    assert [(r.wave_task.key, r.new_status) for r in audit] == [
        ("a", "succeeded"),
        ("b", "succeeded"),
        ("c", "running"),
    ]
    events = Event.objects.filter(id__gt=first_event, type="task.update").order_by("id")
    assert [(e.payload["key"], e.payload["status"]) for e in events] == [
        ("a", "succeeded"),
        ("b", "succeeded"),
        ("c", "running"),
    ]
    assert all(replay(wt) == wt.status for wt in WaveTask.objects.filter(execution=run))


def test_a_big_transition_goes_in_chunks_in_one_transaction(monkeypatch):
    monkeypatch.setattr(transitions, "CHUNK", 2)
    run = run_with_waves(task_list(), [["a", "b"], ["c"]])
    rows = list(WaveTask.objects.filter(execution=run).order_by("key"))
    services.transition(rows[0], TaskStatus.RUNNING, expected=TaskStatus.PENDING)
    changed = services.transition(rows, TaskStatus.QUEUED, expected=[TaskStatus.PENDING], reason="r")
    assert [wt.key for wt in changed] == ["b", "c"]
    assert dict(WaveTask.objects.filter(execution=run).values_list("key", "status")) == {
        "a": "running",
        "b": "queued",
        "c": "queued",
    }
    assert all(replay(wt) == wt.status for wt in WaveTask.objects.filter(execution=run))
