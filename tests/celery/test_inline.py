"""The celery backend's executor and worker sides in one process, on any database: each
message is "delivered" by running the worker's code right after the executor's turn commits."""

import pytest

from executions import services, tasks
from executions.engine import Engine
from executions.models import (
    BuildAgentInstance,
    ExecutionRun,
    RemoteAttempt,
    RunStatus,
    TaskStatusAudit,
    WaveTask,
)
from executions.runners import attempt_result
from executions.runners.base import LaunchSpec
from executions.runners.celery import CeleryRunner
from executions.runners.local import LocalRunner
from observability.models import TranscriptEntry
from tests.celery.test_celery_backend import DAG, importing, recorded
from tests.executions.helpers import assert_audit_replays
from waves.selectors import task_list_get

pytestmark = pytest.mark.django_db(transaction=True)


class InlineRunner(CeleryRunner):
    def __init__(self, deliveries: int = 1):
        super().__init__()
        self.deliveries = deliveries
        self.outcomes: list[str] = []

    def _send(self, pk, args, queue, task_id):
        for _ in range(self.deliveries):
            self.outcomes.append(tasks.execute_attempt(args[0], LaunchSpec(**args[1])))


@pytest.fixture(autouse=True)
def worker_runner(settings, monkeypatch):
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"  # never contacted: nothing is sent
    runner = LocalRunner()
    monkeypatch.setattr(tasks, "_runner", runner)
    yield
    runner.close()


def run(name: str, backend: str, runner=None):
    run = services.run_start(task_list_get(name), backend=backend)
    return Engine(run, runner or (InlineRunner() if backend == "celery" else LocalRunner())).execute()


def test_the_same_results_as_the_local_runner(tmp_path):
    importing(tmp_path, "dag", DAG, max_parallelism=3)
    local, remote = run("dag", "local"), run("dag", "celery")
    assert remote.tasks == local.tasks == {"succeeded": 6, "failed": 1, "skipped": 1, "cancelled": 0}
    assert recorded(remote.run_id) == recorded(local.run_id)
    assert attempt_result("celery", remote.run_id, "discover", 1).outputs == {"regions": ["eu", "us", "apac"]}
    assert attempt_result("celery", remote.run_id, "slow", 1) is None  # timed out: no exit status


def test_each_message_delivered_twice_runs_and_counts_once(tmp_path):
    steps = [{"id": f"s{i}", "run": f"echo line {i}"} for i in range(3)]
    steps.append({"id": "end", "depends_on": ["s0", "s1", "s2"], "run": "echo end"})
    importing(tmp_path, "twice", steps)
    runner = InlineRunner(deliveries=2)
    summary = run("twice", "celery", runner)
    assert summary.status == "succeeded"
    assert sum("not run: it is no longer queued" in o for o in runner.outcomes) == 4
    assert_audit_replays(WaveTask.objects.get(key="end").execution)
    assert TaskStatusAudit.objects.filter(execution_id=summary.run_id).count() == 4 * 4  # pending, queued, running, succeeded
    assert BuildAgentInstance.objects.filter(execution_id=summary.run_id).count() == 4
    assert TranscriptEntry.objects.filter(execution_id=summary.run_id, entry_type="stdout").count() == 4
    assert RemoteAttempt.objects.filter(execution_id=summary.run_id, state="finished").count() == 4


@pytest.mark.parametrize("on_record", [1, 0])  # sent from pending (attempt 1 written), or after waiting for a slot
def test_an_attempt_a_worker_finished_before_its_executor_recorded_it_is_not_run_again(tmp_path, on_record):
    importing(tmp_path, "unread", [{"id": "once", "run": "true"}])
    old = services.run_start(task_list_get("unread"), backend="celery")
    ExecutionRun.objects.filter(pk=old.pk).update(status=RunStatus.RUNNING)
    WaveTask.objects.filter(execution=old, key="once").update(status="queued", attempt=on_record)
    # The worker ran attempt 1 to its end; the executor died before it read the start or the end.
    row = RemoteAttempt.objects.create(execution=old, key="once", attempt=1, queue="q", task_id="t")
    spec = LaunchSpec(run_id=old.pk, key="once", attempt=1, command="echo '{\"n\": 1}' > $TIDEWATCH_OUTPUT")
    assert tasks.execute_attempt(row.pk, spec).endswith("exit 0")
    ExecutionRun.objects.filter(pk=old.pk).update(status=RunStatus.FAILED)
    new = services.run_resume(ExecutionRun.objects.get(pk=old.pk))
    carried = WaveTask.objects.get(execution=new, key="once")
    assert (carried.status, carried.attempt, carried.outputs) == ("succeeded", 1, {"n": 1})
    reason = TaskStatusAudit.objects.filter(wave_task=carried).order_by("id").last().reason
    assert reason == f"attempt 1 of run {old.pk} finished (exit 0) while its executor was stopping: not run again"
