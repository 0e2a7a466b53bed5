"""The celery backend's executor and worker sides in one process, on any database: each
message is "delivered" by running the worker's code right after the executor's turn commits."""

import pytest

from executions import services, tasks
from executions.engine import Engine
from executions.models import BuildAgentInstance, RemoteAttempt, TaskStatusAudit, WaveTask
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
