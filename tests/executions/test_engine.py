"""The parallel executor with real subprocesses: scheduling, isolation, failure, retries,
timeouts, outputs, the audit, waves and agents, resume, cancel and kill -9."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from django.core.management import call_command

from executions.engine import Engine
from executions.models import (
    AgentStatus,
    BuildAgentInstance,
    ConcurrentExecutionSession,
    Event,
    ExecutionRun,
    ParallelExecutionWave,
    RunStatus,
    TaskStatus,
    TaskStatusAudit,
    WaveStatus,
    WaveTask,
)
from executions.runners.base import Finished, Started
from executions.services import run_start
from tests.conftest import ROOT
from tests.executions.helpers import agents_peak, assert_audit_replays, pid_alive, wait_for
from tests.seeds import SEED_003
from waves.selectors import task_list_get

S = TaskStatus


def write_workflow(tmp_path: Path, name: str, steps: list[dict], **top) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "steps": steps, **top}, sort_keys=False))
    return path


def run_list(name: str, *args) -> tuple[int, dict]:
    out = io.StringIO()
    code = 0
    try:
        call_command("run_tasklist", name, "--json", *args, stdout=out)
    except SystemExit as exc:
        code = exc.code
    return code, json.loads(out.getvalue())


def importing(tmp_path, name, steps, **top) -> str:
    call_command("import_tasklist", str(write_workflow(tmp_path, name, steps, **top)), stdout=io.StringIO())
    return name


pytestmark = pytest.mark.django_db


def test_failure_is_isolated_dependents_skipped_and_counts_exact(tmp_path):
    name = importing(
        tmp_path,
        "iso",
        [
            {"id": "ok1", "run": "echo one"},
            {"id": "bad", "run": "echo broken >&2; exit 3"},
            {"id": "after_bad", "run": "echo never", "depends_on": ["bad"]},
            {"id": "after_after", "run": "echo never", "depends_on": ["after_bad"]},
            {"id": "ok2", "run": "sleep 0.2; echo two", "depends_on": ["ok1"]},
        ],
    )
    code, summary = run_list(name)
    assert code == 1
    assert summary["status"] == "failed"
    assert summary["tasks"] == {"succeeded": 2, "failed": 1, "skipped": 2, "cancelled": 0}
    run = ExecutionRun.objects.get(pk=summary["run_id"])
    statuses = dict(WaveTask.objects.filter(execution=run).values_list("key", "status"))
    assert statuses == {
        "ok1": S.SUCCEEDED,
        "bad": S.FAILED,
        "after_bad": S.SKIPPED,
        "after_after": S.SKIPPED,
        "ok2": S.SUCCEEDED,
    }
    bad = WaveTask.objects.get(execution=run, key="bad")
    assert bad.exit_code == 3 and bad.error == "exit code 3"
    skipped = TaskStatusAudit.objects.get(wave_task__key="after_bad", new_status=S.SKIPPED, execution=run)
    assert skipped.reason == "dependency bad failed"
    assert run.status == RunStatus.FAILED
    assert_audit_replays(run)


def test_outputs_flow_downstream_as_inputs_and_substitutions_are_shell_quoted(tmp_path):
    marker = tmp_path / "pwned"
    payload = f"$(touch {marker})"
    name = importing(
        tmp_path,
        "outs",
        [
            {
                "id": "produce",
                "run": f"""python3 -c 'import json,os; json.dump({{"evil": {json.dumps(payload)}, "n": 7}}, open(os.environ["TIDEWATCH_OUTPUT"], "w"))'""",
            },
            {
                "id": "consume",
                "run": 'echo got ${steps.produce.outputs.evil}; cp "$TIDEWATCH_INPUTS" '
                + str(tmp_path / "inputs.json")
                + '; echo "{\\"env\\": \\"$TIDEWATCH_INPUT_N\\"}" > "$TIDEWATCH_OUTPUT"',
                "inputs": {"n": "${steps.produce.outputs.n}", "all": "${steps.produce.outputs}"},
            },
        ],
    )
    code, summary = run_list(name)
    assert code == 0, summary
    assert not marker.exists(), "an output was executed by the shell"
    inputs = json.loads((tmp_path / "inputs.json").read_text())
    assert inputs == {"n": 7, "all": {"evil": payload, "n": 7}}
    consume = WaveTask.objects.get(execution_id=summary["run_id"], key="consume")
    assert consume.outputs == {"env": "7"}


def test_retries_make_new_attempts_each_with_its_own_agent(tmp_path):
    counter = tmp_path / "count"
    name = importing(
        tmp_path,
        "retry",
        [{"id": "flaky", "retries": 2, "run": f"echo x >> {counter}; test $(wc -l < {counter}) -ge 3"}],
    )
    code, summary = run_list(name)
    assert code == 0
    wt = WaveTask.objects.get(execution_id=summary["run_id"], key="flaky")
    assert wt.status == S.SUCCEEDED and wt.attempt == 3
    agents = BuildAgentInstance.objects.filter(wave_task=wt).order_by("attempt")
    assert [(a.attempt, a.status) for a in agents] == [(1, "failed"), (2, "failed"), (3, "succeeded")]
    assert len({a.instance_id for a in agents}) == 3
    assert all(a.pid and a.hostname and a.last_heartbeat for a in agents)
    assert_audit_replays(wt.execution)


def test_timeout_kills_the_whole_process_group(tmp_path):
    pids = tmp_path / "pids"
    name = importing(
        tmp_path,
        "slow",
        [{"id": "hang", "timeout": 1, "run": f"sleep 60 & echo $! > {pids}; sleep 60"}],
    )
    started = time.monotonic()
    code, summary = run_list(name)
    assert code == 1
    assert time.monotonic() - started < 10
    wt = WaveTask.objects.get(execution_id=summary["run_id"], key="hang")
    assert wt.status == S.FAILED and "timed out after 1s" in wt.error
    background = int(pids.read_text())
    time.sleep(0.2)
    assert not pid_alive(background), "the background child of a timed-out task survived"


def test_max_parallelism_template_and_block_limits_are_never_exceeded(tmp_path):
    steps = [{"id": f"t{i}", "run": "sleep 0.15"} for i in range(8)]
    steps += [{"id": f"x{i}", "template": "extract", "run": "sleep 0.15"} for i in range(4)]
    steps.append(
        {
            "id": "block",
            "type": "parallel",
            "max_parallelism": 1,
            "steps": [{"id": f"b{i}", "run": "sleep 0.1"} for i in range(3)],
        }
    )
    name = importing(tmp_path, "limits", steps, max_parallelism=3)
    from waves.models import TaskTemplate

    TaskTemplate.objects.filter(name="extract").update(max_concurrency=1)
    code, summary = run_list(name)
    assert code == 0, summary
    run = ExecutionRun.objects.get(pk=summary["run_id"])
    agents = BuildAgentInstance.objects.filter(execution=run)
    assert agents_peak(agents) <= 3
    assert summary["peak_concurrency"] == 3
    assert agents_peak(agents.filter(task__template__name="extract")) == 1
    assert agents_peak(agents.filter(task__key__startswith="b")) == 1
    code, summary = run_list(name, "--max-parallelism", "1")
    assert agents_peak(BuildAgentInstance.objects.filter(execution_id=summary["run_id"])) == 1


def test_waves_agents_and_transcripts_are_recorded(tmp_path):
    name = importing(
        tmp_path,
        "rec",
        [
            {"id": "a", "run": "echo out-a; echo err-a >&2"},
            {"id": "b", "run": "echo out-b"},
            {"id": "c", "run": "echo out-c", "depends_on": ["a", "b"]},
        ],
    )
    code, summary = run_list(name)
    assert code == 0 and summary["waves"] == 2
    run = ExecutionRun.objects.get(pk=summary["run_id"])
    waves = list(ParallelExecutionWave.objects.filter(execution=run).order_by("wave_number"))
    assert [(w.wave_number, w.status) for w in waves] == [
        (1, WaveStatus.SUCCEEDED),
        (2, WaveStatus.SUCCEEDED),
    ]
    assert all(w.started_at and w.completed_at and w.started_at <= w.completed_at for w in waves)
    assert waves[0].completed_at <= waves[1].started_at
    assert set(WaveTask.objects.filter(wave=waves[0]).values_list("key", flat=True)) == {"a", "b"}
    agents = BuildAgentInstance.objects.filter(execution=run)
    assert agents.count() == 3 and set(agents.values_list("status", flat=True)) == {AgentStatus.SUCCEEDED}
    from observability.models import TranscriptEntry

    lines = TranscriptEntry.objects.filter(execution=run, entry_type__in=["stdout", "stderr"])
    got = {(e.wave_task.key, e.entry_type, e.content, e.wave_id) for e in lines.select_related("wave_task")}
    assert ("a", "stdout", "out-a", waves[0].pk) in got
    assert ("a", "stderr", "err-a", waves[0].pk) in got
    assert ("c", "stdout", "out-c", waves[1].pk) in got
    assert_audit_replays(run)  # c waits on a and b, which may finish in one batch: one launch
    sequences = list(TranscriptEntry.objects.filter(execution=run).values_list("sequence", flat=True))
    assert len(sequences) == len(set(sequences))


def test_a_chain_is_recorded_in_causal_order_with_a_peak_of_one(tmp_path):
    # The executor starts what a success unblocks before it writes that success; the
    # audit, the event log and the session peak must still read in causal order.
    steps = [{"id": "s0", "run": "true"}] + [
        {"id": f"s{i}", "run": "true", "depends_on": [f"s{i - 1}"]} for i in range(1, 6)
    ]
    name = importing(tmp_path, "chain", steps, max_parallelism=4)
    code, summary = run_list(name)
    assert code == 0 and summary["peak_concurrency"] == 1
    run = ExecutionRun.objects.get(pk=summary["run_id"])
    session = ConcurrentExecutionSession.objects.get(pk=run.session_id)
    assert (session.peak_concurrent_tasks, session.peak_concurrent_agents) == (1, 1)
    assert (session.running_tasks, session.running_agents, session.total_agent_count) == (0, 0, 6)
    assert_audit_replays(run)
    audit = [
        (row.wave_task.key, row.new_status)
        for row in TaskStatusAudit.objects.filter(execution=run).select_related("wave_task").order_by("id")
    ]
    events = [
        (e.payload.get("key") or e.payload["instance_id"], e.type, e.payload["status"])
        for e in Event.objects.filter(execution=run, type__in=["task.update", "agent.update"]).order_by("id")
    ]
    for i in range(1, 6):
        assert audit.index((f"s{i - 1}", S.SUCCEEDED)) < audit.index((f"s{i}", S.RUNNING))
        previous_agent = f"r{run.pk}-s{i - 1}-a1"
        assert events.index((previous_agent, "agent.update", AgentStatus.SUCCEEDED)) < events.index(
            (f"s{i}", "task.update", S.RUNNING)
        )
        assert events.index((f"s{i - 1}", "task.update", S.SUCCEEDED)) < events.index(
            (f"s{i}", "task.update", S.RUNNING)
        )
    times = list(Event.objects.filter(execution=run).order_by("id").values_list("created_at", flat=True))
    assert times == sorted(times)


def test_long_lines_are_cut_with_a_truncation_marker(tmp_path, settings):
    settings.TIDEWATCH = {**settings.TIDEWATCH, "TRANSCRIPT_ENTRY_MAX_BYTES": 100}
    name = importing(
        tmp_path, "long", [{"id": "big", "run": 'python3 -c \'print("x" * 1000); print("after")\''}]
    )
    code, summary = run_list(name)
    assert code == 0
    from observability.models import TranscriptEntry

    contents = list(
        TranscriptEntry.objects.filter(execution_id=summary["run_id"], entry_type="stdout")
        .order_by("sequence")
        .values_list("content", flat=True)
    )
    assert contents[0] == "x" * 100
    assert "truncated" in contents[1] and "1000 bytes" in contents[1]
    assert contents[2] == "after"


def test_events_file_lines_become_records_and_bad_lines_are_kept(tmp_path):
    lines = [
        {"type": "tool_use", "tool_name": "grep", "input": {"q": "x"}, "is_error": True},
        {"type": "assertion", "name": "rows > 0", "passed": True},
        {"type": "skill", "skill_name": "summarise", "payload": {"k": 1}},
        {"type": "message", "content": "hello"},
    ]
    script = "; ".join(f'echo {json.dumps(json.dumps(line))} >> "$TIDEWATCH_EVENTS"' for line in lines)
    script += '; echo "not json" >> "$TIDEWATCH_EVENTS"'
    name = importing(tmp_path, "events", [{"id": "ev", "run": script}])
    code, summary = run_list(name)
    assert code == 0
    from observability.models import AssertionResult, SkillTrace, ToolUse, TranscriptEntry

    run_id = summary["run_id"]
    wave = ParallelExecutionWave.objects.get(execution_id=run_id)
    tool = ToolUse.objects.get(execution_id=run_id)
    assert tool.tool_name == "grep" and tool.is_error is True and tool.wave_id == wave.pk
    assert AssertionResult.objects.get(execution_id=run_id).passed is True
    assert SkillTrace.objects.get(execution_id=run_id).skill_name == "summarise"
    assert TranscriptEntry.objects.filter(execution_id=run_id, entry_type="message", content="hello").exists()
    invalid = TranscriptEntry.objects.get(execution_id=run_id, entry_type="invalid_event")
    assert "not json" in invalid.content


def test_bad_arguments_exit_2(tmp_path):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError) as err:
        call_command("run_tasklist", "no-such-list")
    assert err.value.returncode == 2
    with pytest.raises(CommandError) as err:
        call_command("run_tasklist", "--resume", "999")
    assert err.value.returncode == 2 and "999" in str(err.value)


def test_simulate_runs_seed_003_example_1_dag_greedy(tmp_path):
    """Seed 003 Example 1 under --simulate: groups of one wave overlap, every step starts
    only after its own dependencies, and nothing waits for a wave barrier. (The wall time
    against the seed's 90 minutes is measured by benchmarks/bench_simulate.py.)"""
    path = tmp_path / "example1.pipeline"
    path.write_text(SEED_003["example1"][0])
    call_command("import_tasklist", str(path), "--name", "ex1", stdout=io.StringIO())
    code, summary = run_list("ex1", "--simulate", "0.005", "--max-parallelism", "8")
    assert code == 0 and summary["waves"] == 5
    agents = {
        a.task.key: a
        for a in BuildAgentInstance.objects.filter(execution_id=summary["run_id"]).select_related("task")
    }
    assert len(agents) == 9
    web, mobile = agents["step-5"], agents["step-7"]
    assert web.started_at < mobile.completed_at and mobile.started_at < web.completed_at
    for task_key, dep_keys in {
        "step-4": ["step-2", "step-3"],
        "step-9": ["step-5", "step-6", "step-7", "step-8"],
    }.items():
        assert all(agents[task_key].started_at >= agents[d].completed_at for d in dep_keys)


def test_critical_path_first_starts_the_long_chain_before_independent_tasks(tmp_path):
    steps = [{"id": f"ind{i}", "run": "sleep 0.05"} for i in range(6)]
    steps.append({"id": "c0", "run": "sleep 0.05"})
    steps += [{"id": f"c{i}", "run": "sleep 0.05", "depends_on": [f"c{i - 1}"]} for i in range(1, 4)]
    name = importing(tmp_path, "cp", steps, max_parallelism=1)
    _, summary = run_list(name)
    order = list(
        BuildAgentInstance.objects.filter(execution_id=summary["run_id"])
        .order_by("started_at", "id")
        .values_list("task__key", flat=True)
    )
    assert order[0] == "c0"
    _, summary = run_list(name, "--schedule", "fifo")
    order = list(
        BuildAgentInstance.objects.filter(execution_id=summary["run_id"])
        .order_by("started_at", "id")
        .values_list("task__key", flat=True)
    )
    assert order[0] == "ind0"


def test_resume_reruns_only_what_did_not_succeed(tmp_path):
    log = tmp_path / "log"
    gate = tmp_path / "fixed"
    name = importing(
        tmp_path,
        "resume",
        [
            {"id": "good", "run": f"echo good >> {log}; echo '{{\"v\": 1}}' > $TIDEWATCH_OUTPUT"},
            {"id": "flaky", "run": f"echo flaky >> {log}; test -e {gate}"},
            {
                "id": "after",
                "run": f"echo after ${{steps.good.outputs.v}} >> {log}",
                "depends_on": ["flaky", "good"],
            },
        ],
    )
    code, first = run_list(name)
    assert code == 1
    gate.touch()
    code, second = run_list(name, "--resume", str(first["run_id"]))
    assert code == 0, second
    assert log.read_text().split("\n")[:-1] == ["good", "flaky", "flaky", "after 1"] or sorted(
        log.read_text().split("\n")[:-1]
    ) == sorted(["good", "flaky", "flaky", "after 1"])
    assert log.read_text().count("good\n") == 1
    run = ExecutionRun.objects.get(pk=second["run_id"])
    assert run.resumed_from_id == first["run_id"] and run.attempt == 2
    good = WaveTask.objects.get(execution=run, key="good")
    assert good.status == S.SUCCEEDED and good.outputs == {"v": 1}
    assert not BuildAgentInstance.objects.filter(wave_task=good).exists()
    assert_audit_replays(run)
    assert_audit_replays(ExecutionRun.objects.get(pk=first["run_id"]))


# --- several processes -----------------------------------------------------------------------


def spawn_executor(child_env, *args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "run_tasklist", *args, "--json"],
        env=child_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


@pytest.mark.django_db(transaction=True)
def test_kill_9_of_the_executor_leaves_no_orphan_and_resume_completes(tmp_path, child_env, manage, settings):
    pids = tmp_path / "pids"
    done = tmp_path / "done"
    name = importing(
        tmp_path,
        "k9",
        [
            {"id": "quick", "run": "true"},
            {
                "id": "long",
                "run": f"test -e {done} && exit 0; sleep 30 & echo $! >> {pids}; echo $$ >> {pids}; wait",
            },
        ],
    )
    proc = spawn_executor(child_env, name)
    wait_for(lambda: pids.exists() and len(pids.read_text().split()) == 2, proc=proc)
    task_pids = [int(p) for p in pids.read_text().split()]
    run = ExecutionRun.objects.get(task_list__title=name)
    # Kill once the attempt is on record (under load the task can write its pids first).
    wait_for(lambda: BuildAgentInstance.objects.filter(execution=run, task__key="long").exists())
    wait_for(lambda: WaveTask.objects.filter(execution=run, key="quick", status=S.SUCCEEDED).exists())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    wait_for(lambda: not any(pid_alive(p) for p in task_pids), timeout=10)
    done.touch()
    result = manage("run_tasklist", "--resume", run.pk, "--json", timeout=60)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert BuildAgentInstance.objects.get(execution=run, task__key="long").status == AgentStatus.LOST
    assert WaveTask.objects.get(execution=run, key="long").status == S.LOST
    resumed = ExecutionRun.objects.get(pk=summary["run_id"])
    assert resumed.status == RunStatus.SUCCEEDED
    assert not BuildAgentInstance.objects.filter(execution=resumed, task__key="quick").exists()
    assert_audit_replays(run)
    assert_audit_replays(resumed)


@pytest.mark.django_db(transaction=True)
def test_sigterm_cancels_the_run_and_its_process_groups(tmp_path, child_env):
    pids = tmp_path / "pids"
    name = importing(
        tmp_path,
        "term",
        [
            {"id": "long", "run": f"sleep 30 & echo $! >> {pids}; wait"},
            {"id": "later", "run": "true", "depends_on": ["long"]},
        ],
    )
    proc = spawn_executor(child_env, name)
    wait_for(lambda: pids.exists() and pids.read_text().strip(), proc=proc)
    child = int(pids.read_text())
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=15)
    assert proc.returncode == 1, err
    summary = json.loads(out)
    assert summary["status"] == "cancelled"
    assert summary["tasks"]["cancelled"] == 2
    assert not pid_alive(child)
    run = ExecutionRun.objects.get(pk=summary["run_id"])
    assert set(WaveTask.objects.filter(execution=run).values_list("status", flat=True)) == {S.CANCELLED}
    assert_audit_replays(run)


@pytest.mark.django_db(transaction=True)
def test_two_executors_share_a_session_with_exact_peaks(tmp_path, child_env):
    # Every task waits until all six exist, so the true peak is six whatever the load.
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    wait_all = f"touch {barrier}/$TIDEWATCH_RUN_ID-$TIDEWATCH_STEP; until [ $(ls {barrier} | wc -l) -ge 6 ]; do sleep 0.05; done; sleep 0.3"
    for name in ("left", "right"):
        importing(tmp_path, name, [{"id": f"s{i}", "run": wait_all} for i in range(3)], max_parallelism=3)
    procs = [spawn_executor(child_env, name) for name in ("left", "right")]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    runs = ExecutionRun.objects.filter(task_list__title__in=["left", "right"])
    assert runs.count() == 2
    sessions = {r.session_id for r in runs}
    assert len(sessions) == 1 and None not in sessions
    session = ConcurrentExecutionSession.objects.get(pk=sessions.pop())
    assert session.status == "completed" and session.completed_at is not None
    assert session.execution_count == 2
    assert session.running_tasks == 0 and session.running_agents == 0
    agents = BuildAgentInstance.objects.filter(execution__in=runs)
    assert session.peak_concurrent_agents == agents_peak(agents) == 6
    assert session.peak_concurrent_tasks == 6
    assert session.total_agent_count == 6 and session.total_task_count == 6
    for run in runs:
        assert_audit_replays(run)
        assert WaveTask.objects.filter(execution=run, status=S.SUCCEEDED).count() == 3


class InterruptedRunner:
    """Every attempt dies of SIGINT just as the executor is told to stop: what happens to a
    task started the moment a terminal's ^C goes out, before it has left the executor's
    process group (its exit shows the signal, not a terminate of ours)."""

    def __init__(self):
        self.engine = None
        self.launched: list[str] = []

    def launch(self, spec):
        self.launched.append(spec.handle)

    def poll(self, timeout):
        self.engine.request_stop("SIGINT")
        done, self.launched = self.launched, []
        return [Started(h, 4_000_000, "here") for h in done] + [Finished(h, -signal.SIGINT) for h in done]

    def terminate(self, handle):
        pass

    def terminate_all(self):
        pass

    def close(self):
        pass


def test_a_task_killed_by_the_signal_that_stops_the_run_is_cancelled_not_failed(tmp_path):
    name = importing(tmp_path, "interrupted", [{"id": "a", "run": "sleep 5"}, {"id": "b", "run": "sleep 5"}])
    runner = InterruptedRunner()
    engine = Engine(run_start(task_list_get(name)), runner)
    runner.engine = engine
    summary = engine.execute()
    assert summary.status == RunStatus.CANCELLED
    assert summary.tasks == {"succeeded": 0, "failed": 0, "skipped": 0, "cancelled": 2}
    rows = TaskStatusAudit.objects.filter(execution_id=summary.run_id, new_status=S.CANCELLED)
    assert set(rows.values_list("reason", flat=True)) == {"cancelled by SIGINT"}
    agents = BuildAgentInstance.objects.filter(execution_id=summary.run_id)
    assert set(agents.values_list("status", "exit_code")) == {(AgentStatus.CANCELLED, -signal.SIGINT)}
    assert_audit_replays(ExecutionRun.objects.get(pk=summary.run_id))
