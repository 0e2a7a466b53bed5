"""The celery backend with real workers, against PostgreSQL and Redis (see conftest.py)."""

import io
import json
import signal
import subprocess
import sys
from collections import defaultdict

import pytest
import yaml
from django.conf import settings
from django.core.management import call_command
from django.forms.models import model_to_dict

from executions import services
from executions.engine import Engine
from executions.models import (
    AgentStatus,
    BuildAgentInstance,
    ConcurrentExecutionSession,
    ExecutionRun,
    RemoteAttempt,
    RemoteLine,
    TaskStatus,
    TaskStatusAudit,
    WaveTask,
)
from executions.runners.celery import CeleryRunner
from observability import services as observability
from observability.models import ToolUse, TranscriptEntry, WaveStatistics
from tests.conftest import ROOT
from tests.executions.helpers import assert_audit_replays, pid_alive, wait_for
from waves.models import TaskTemplate
from waves.selectors import task_list_get

S = TaskStatus
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def importing(tmp_path, name: str, steps: list[dict], **top) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "steps": steps, **top}, sort_keys=False))
    call_command("import_tasklist", str(path), stdout=io.StringIO())
    return name


def finish(proc, timeout=180) -> tuple[int, dict]:
    out, err = proc.communicate(timeout=timeout)
    assert out.strip(), f"no summary (exit {proc.returncode}):\n{err}"
    return proc.returncode, json.loads(out)


def attempt_row(run_id: int, key: str) -> RemoteAttempt:
    return RemoteAttempt.objects.filter(execution_id=run_id, key=key).order_by("-attempt").first()


def started(run_id: int, key: str):
    row = attempt_row(run_id, key)
    return row if row is not None and row.pid else None


def recorded(run_id: int) -> dict:
    """What a run left on record, per step, without what differs between any two runs
    (ids, times, pids, hosts, and whether a ready step waited for a slot: `queued`)."""
    out = {}
    audit = defaultdict(list)
    for key, new in TaskStatusAudit.objects.filter(execution_id=run_id).order_by("id").values_list(
        "wave_task__key", "new_status"
    ):
        if new != S.QUEUED:
            audit[key].append(new)
    lines = defaultdict(list)
    for key, kind, text in (
        TranscriptEntry.objects.filter(execution_id=run_id)
        .exclude(entry_type="system")
        .order_by("sequence")
        .values_list("wave_task__key", "entry_type", "content")
    ):
        lines[key].append((kind, text))
    for wt in WaveTask.objects.filter(execution_id=run_id):
        out[wt.key] = {
            "status": wt.status, "outputs": wt.outputs, "exit_code": wt.exit_code, "attempt": wt.attempt,
            "error": wt.error, "audit": audit[wt.key], "lines": lines[wt.key],
        }  # fmt: skip
    out["tool_uses"] = ToolUse.objects.filter(execution_id=run_id).count()
    return out


DAG = [
    {
        "id": "discover",
        "run": (
            "echo hello; echo oops >&2; "
            """echo '{"regions": ["eu", "us", "apac"]}' > "$TIDEWATCH_OUTPUT"; """
            """echo '{"type": "tool_use", "tool_name": "grep", "input": {}}' >> "$TIDEWATCH_EVENTS"; """
            """echo 'not json' >> "$TIDEWATCH_EVENTS" """
        ),
    },
    {
        "id": "per_region",
        "for_each": "${steps.discover.outputs.regions}",
        "run": """printf '{"region": "%s"}' ${item} > "$TIDEWATCH_OUTPUT"; echo region ${item}""",
    },
    {
        "id": "join",
        "depends_on": ["per_region"],
        "inputs": {"all": "${steps.per_region.outputs}"},
        "run": """cat "$TIDEWATCH_INPUTS"; echo; cp "$TIDEWATCH_INPUTS" "$TIDEWATCH_OUTPUT" """,
    },
    {"id": "flaky", "retries": 1, "run": 'echo attempt $TIDEWATCH_ATTEMPT; [ "$TIDEWATCH_ATTEMPT" = 2 ] || exit 3'},
    {"id": "slow", "timeout": 1, "run": "echo before; sleep 30; echo never"},
    {"id": "after_slow", "depends_on": ["slow"], "run": "echo never"},
]


def test_a_dag_runs_end_to_end_with_the_same_results_as_the_local_runner(tmp_path, workers, executor):
    importing(tmp_path, "dag", DAG, max_parallelism=3)
    code, local = finish(executor("dag", "--json"))
    assert code == 1 and local["tasks"] == {"succeeded": 6, "failed": 1, "skipped": 1, "cancelled": 0}
    workers()
    code, remote = finish(executor("dag", "--backend", "celery", "--json"))
    assert code == 1, remote
    assert remote["tasks"] == local["tasks"] and remote["waves"] == local["waves"]
    assert recorded(remote["run_id"]) == recorded(local["run_id"])
    run = ExecutionRun.objects.get(pk=remote["run_id"])
    assert run.backend == "celery"
    assert_audit_replays(run)
    slow = WaveTask.objects.get(execution=run, key="slow")
    assert slow.error == "timed out after 1s"
    # The worker ran each attempt once, and the executor's disk saw none of them.
    rows = RemoteAttempt.objects.filter(execution=run)
    assert sorted(rows.values_list("key", "attempt")) == sorted(
        BuildAgentInstance.objects.filter(execution=run).values_list("wave_task__key", "attempt")
    )
    assert set(rows.values_list("state", flat=True)) == {RemoteAttempt.State.FINISHED}
    assert not (tmp_path / "var" / "work" / f"run-{run.pk}").exists()
    assert (tmp_path / "worker-1" / "work" / f"run-{run.pk}").is_dir()


def test_a_worker_killed_mid_task_is_detected_and_a_resume_with_a_fresh_worker_completes(
    tmp_path, workers, executor
):
    go = tmp_path / "go"
    steps = [
        {"id": "first", "run": "echo one"},
        {"id": "slow", "depends_on": ["first"], "run": f"[ -e {go} ] || sleep 300; echo done"},
        {"id": "last", "depends_on": ["slow"], "run": "echo last"},
    ]
    importing(tmp_path, "kill", steps)
    worker = workers()
    proc = executor("kill", "--backend", "celery", "--json")
    run_id = wait_for(
        lambda: ExecutionRun.objects.filter(task_list__title="kill").values_list("pk", flat=True).first(),
        proc=proc, what="the run",
    )  # fmt: skip
    row = wait_for(lambda: started(run_id, "slow"), proc=proc, what="slow to start on the worker")
    worker.kill9()
    # Its process group does not outlive it, and the executor finds the worker gone.
    wait_for(lambda: not pid_alive(row.pid), timeout=30, what=f"the task's process {row.pid} to end")
    code, summary = finish(proc)
    assert code == 1 and summary["status"] == "failed"
    slow = WaveTask.objects.get(execution_id=run_id, key="slow")
    assert slow.status == S.LOST and "worker lost" in slow.error
    assert WaveTask.objects.get(execution_id=run_id, key="last").status == S.SKIPPED
    assert BuildAgentInstance.objects.get(execution_id=run_id, wave_task=slow).status == AgentStatus.LOST
    assert attempt_row(run_id, "slow").state == RemoteAttempt.State.LOST
    assert_audit_replays(ExecutionRun.objects.get(pk=run_id))

    go.touch()
    workers()
    code, summary = finish(executor("--resume", run_id, "--json"))
    assert code == 0 and summary["status"] == "succeeded", summary
    resumed = summary["run_id"]
    assert dict(WaveTask.objects.filter(execution_id=resumed).values_list("key", "status")) == {
        "first": S.SUCCEEDED, "slow": S.SUCCEEDED, "last": S.SUCCEEDED
    }  # fmt: skip
    assert list(RemoteAttempt.objects.filter(execution_id=resumed).values_list("key", flat=True).order_by("key")) == [
        "last", "slow"
    ]  # fmt: skip


def test_an_executor_killed_mid_run_leaves_nothing_running_on_the_worker(tmp_path, workers, executor):
    importing(tmp_path, "orphan", [{"id": "long", "run": "sleep 300"}])
    workers()
    proc = executor("orphan", "--backend", "celery", "--json")
    run_id = wait_for(
        lambda: ExecutionRun.objects.filter(task_list__title="orphan").values_list("pk", flat=True).first(),
        proc=proc, what="the run",
    )  # fmt: skip
    row = wait_for(lambda: started(run_id, "long"), proc=proc, what="long to start on the worker")
    # The executor records the start when it reads it back (the step was queued until then).
    running = WaveTask.objects.filter(execution_id=run_id, key="long", status=S.RUNNING)
    wait_for(running.exists, proc=proc, what="the executor to record that long runs")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert services.reap_abandoned_runs() == [run_id]  # its pid is gone from this host
    wait_for(lambda: not pid_alive(row.pid), timeout=30, what=f"the task's process {row.pid} to end")
    assert WaveTask.objects.get(execution_id=run_id, key="long").status == S.LOST


def test_a_cancel_stops_the_tasks_on_the_worker(tmp_path, workers, executor):
    steps = [{"id": f"sleeper{i}", "run": "echo up; sleep 300"} for i in range(2)]
    importing(tmp_path, "cancel", steps)
    workers(pool="prefork", concurrency=2)
    proc = executor("cancel", "--backend", "celery", "--json")
    run_id = wait_for(
        lambda: ExecutionRun.objects.filter(task_list__title="cancel").values_list("pk", flat=True).first(),
        proc=proc, what="the run",
    )  # fmt: skip
    rows = [wait_for(lambda k=k: started(run_id, k), proc=proc, what=k) for k in ("sleeper0", "sleeper1")]
    assert services.run_request_cancel(ExecutionRun.objects.get(pk=run_id), actor="tester")
    code, summary = finish(proc)
    assert code == 1 and summary["status"] == "cancelled"
    assert summary["tasks"]["cancelled"] == 2
    for row in rows:
        wait_for(lambda row=row: not pid_alive(row.pid), timeout=30, what=f"process {row.pid} to end")
        row.refresh_from_db()
        assert json.loads(row.result)["cancelled"] is True
    assert set(WaveTask.objects.filter(execution_id=run_id).values_list("status", flat=True)) == {S.CANCELLED}


def test_two_workers_share_a_run_and_a_template_queue_routes_to_its_own_workers(tmp_path, workers, executor):
    steps = [{"id": f"t{i}", "run": "sleep 1", "template": "light"} for i in range(4)]
    steps.append({"id": "heavy", "run": "echo heavy", "template": "heavy", "depends_on": ["t0"]})
    importing(tmp_path, "share", steps, max_parallelism=4)
    heavy_queue = f"{settings.CELERY_TASK_DEFAULT_QUEUE}-heavy"
    TaskTemplate.objects.filter(name="heavy").update(queue=heavy_queue)
    first, second = workers(), workers()
    third = workers(queues=[heavy_queue])
    code, summary = finish(executor("share", "--backend", "celery", "--json"))
    assert code == 0, summary
    rows = RemoteAttempt.objects.filter(execution_id=summary["run_id"])
    light = {worker.split(":")[1] for worker in rows.exclude(key="heavy").values_list("worker", flat=True)}
    assert light == {str(first.pid), str(second.pid)}
    heavy = rows.get(key="heavy")
    assert heavy.queue == heavy_queue and heavy.worker.endswith(f":{third.pid}")


def test_a_step_waiting_for_a_worker_is_queued_not_running(tmp_path, workers, executor):
    importing(tmp_path, "one-worker", [{"id": f"s{i}", "run": "sleep 0.5"} for i in range(3)], max_parallelism=3)
    workers()  # one solo worker: one attempt at a time, the others wait in the broker
    code, summary = finish(executor("one-worker", "--backend", "celery", "--json"))
    assert code == 0, summary
    run = ExecutionRun.objects.get(pk=summary["run_id"])
    moves = []
    for wt in WaveTask.objects.filter(execution=run):
        history = list(TaskStatusAudit.objects.filter(wave_task=wt).order_by("id"))
        assert [a.new_status for a in history] == [S.PENDING, S.QUEUED, S.RUNNING, S.SUCCEEDED]
        moves += [(history[2].changed_at, 1), (history[3].changed_at, -1)]
    running = peak = 0
    for _, d in sorted(moves):
        running += d
        peak = max(peak, running)
    session = ConcurrentExecutionSession.objects.get(pk=run.session_id)
    # What the records, the run and the session say ran at once is what the worker ran.
    assert peak == run.peak_concurrency == summary["peak_concurrency"] == 1
    assert (session.peak_concurrent_tasks, session.peak_concurrent_agents) == (1, 1)


class TwiceRunner(CeleryRunner):
    """Every message goes to the broker twice: at-least-once delivery, at its worst."""

    def _send(self, pk, args, queue, task_id):
        super()._send(pk, args, queue, task_id)
        super()._send(pk, args, queue, task_id)


def test_a_message_delivered_twice_is_recorded_once(tmp_path, workers, celery_env):
    steps = [{"id": f"s{i}", "run": f"echo line {i}; sleep 0.5"} for i in range(4)]
    steps.append({"id": "end", "depends_on": [f"s{i}" for i in range(4)], "run": "echo end"})
    importing(tmp_path, "twice", steps, max_parallelism=4)
    first, second = workers(), workers()
    run = services.run_start(task_list_get("twice"), backend="celery")
    summary = Engine(run, TwiceRunner()).execute()
    assert summary.status == "succeeded" and summary.tasks["succeeded"] == 5
    # Every second delivery was turned away by the worker that got it.
    turned_away = lambda: sum(w.text().count("not run: it is no longer queued") for w in (first, second))  # noqa: E731
    try:
        wait_for(lambda: turned_away() >= 5, timeout=60, what="the duplicates to be delivered")
    except AssertionError:
        raise AssertionError(f"{turned_away()} turned away:\n{first.text()}\n{second.text()}") from None
    assert turned_away() == 5, first.text() + second.text()
    assert_audit_replays(run)
    assert TaskStatusAudit.objects.filter(execution=run).count() == 5 * 4  # pending, queued, running, succeeded
    assert BuildAgentInstance.objects.filter(execution=run).count() == 5
    assert RemoteLine.objects.filter(attempt__execution=run, stream="stdout").count() == 5
    assert TranscriptEntry.objects.filter(execution=run, entry_type="stdout").count() == 5
    session = ConcurrentExecutionSession.objects.get(runs=run)
    assert 1 <= session.peak_concurrent_agents <= 4 and session.running_agents == 0
    before = [model_to_dict(s, exclude=["id", "updated_at"]) for s in WaveStatistics.objects.filter(execution=run)]
    observability.statistics_recompute(execution_id=run.pk)
    after = [model_to_dict(s, exclude=["id", "updated_at"]) for s in WaveStatistics.objects.filter(execution=run)]
    assert before and before == after


def check_worker(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "check_worker"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_the_check_command_reaches_the_database_and_the_broker(celery_env):
    ok = check_worker(celery_env)
    assert ok.returncode == 0, ok.stderr
    assert "database: ok" in ok.stdout and "broker: ok" in ok.stdout
    down = check_worker(dict(celery_env, CELERY_BROKER_URL="redis://127.0.0.1:1/0"))
    assert down.returncode == 1 and "broker" in down.stderr, down.stderr
    unset = check_worker({k: v for k, v in celery_env.items() if k != "CELERY_BROKER_URL"})
    assert unset.returncode == 1 and "CELERY_BROKER_URL" in unset.stderr
    no_db = check_worker(dict(celery_env, DATABASE_URL="postgres://postgres@127.0.0.1:1/nothing"))
    assert no_db.returncode == 1 and "database" in no_db.stderr
