import pytest

from executions import services
from executions.models import Event, TaskStatus, TaskStatusAudit, WaveTask
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
    changed = services.transition(wt, TaskStatus.RUNNING, reason="started")
    assert changed == [wt]
    wt.refresh_from_db()
    assert wt.status == TaskStatus.RUNNING
    audit = TaskStatusAudit.objects.filter(wave_task=wt).order_by("id")
    assert [(a.previous_status, a.new_status) for a in audit] == [(None, "pending"), ("pending", "running")]
    assert Event.objects.filter(type="task.update", payload__wave_task_id=wt.pk).count() == 2
    assert replay(wt) == TaskStatus.RUNNING


def test_transition_respects_allowed_from():
    run = run_with_waves(task_list(), [["a", "b"]])
    a, b = WaveTask.objects.filter(execution=run).order_by("key")
    services.transition(a, TaskStatus.RUNNING)
    changed = services.transition([a, b], TaskStatus.QUEUED, allowed_from=[TaskStatus.PENDING])
    assert [wt.key for wt in changed] == ["b"]
    assert replay(WaveTask.objects.get(pk=a.pk)) == TaskStatus.RUNNING
    assert replay(WaveTask.objects.get(pk=b.pk)) == TaskStatus.QUEUED
