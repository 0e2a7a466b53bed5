"""The engine's loop with a scripted runner (tests/executions/fakes.py): what it records,
how it ends, and what it does when something goes wrong. Real processes are in test_engine."""

import json
import subprocess
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from executions import services
from executions.engine import Engine, EngineCrash
from executions.models import (
    AgentStatus,
    BuildAgentInstance,
    Event,
    ExecutionRun,
    ParallelExecutionWave,
    RunStatus,
    TaskStatus,
    TaskStatusAudit,
    WaveStatus,
    WaveTask,
)
from tests.executions.fakes import FakeRunner, Script
from tests.executions.helpers import assert_audit_replays
from tests.factories import task_list
from waves.models import Task

pytestmark = pytest.mark.django_db
S = TaskStatus


def statuses(run) -> dict[str, str]:
    return dict(WaveTask.objects.filter(execution=run).values_list("key", "status"))


def wave_statuses(run) -> list[str]:
    return list(ParallelExecutionWave.objects.filter(execution=run).order_by("wave_number").values_list("status", flat=True))


def run_with(tl, scripts=None, **kwargs):
    run = services.run_start(tl, **kwargs)
    runner = FakeRunner(scripts)
    return Engine(run, runner).execute(), ExecutionRun.objects.get(pk=run.pk), runner


def test_agents_come_from_the_runner_s_start_events_and_everything_replays():
    tl = task_list(keys=("a", "b", "c"), edges=[("b", "a"), ("c", "b")])
    summary, run, runner = run_with(tl, {"a": Script(lines=["hello"], outputs={"n": 1})})
    assert summary.status == RunStatus.SUCCEEDED and run.status == RunStatus.SUCCEEDED
    agents = BuildAgentInstance.objects.filter(execution=run)
    assert sorted(agents.values_list("hostname", "status")) == [("fakehost", AgentStatus.SUCCEEDED)] * 3
    assert {a.pid for a in agents} == {10_001, 10_002, 10_003}
    assert wave_statuses(run) == [WaveStatus.SUCCEEDED] * 3
    assert WaveTask.objects.get(execution=run, key="a").outputs == {"n": 1}
    assert_audit_replays(run)


def test_a_run_field_is_only_written_by_its_owner_with_its_event():
    tl = task_list(keys=("a", "b", "c"))
    summary, run, _ = run_with(tl)
    assert summary.peak_concurrency == run.peak_concurrency == 3
    payloads = [e.payload for e in Event.objects.filter(execution=run, type="run.update").order_by("id")]
    assert [p["peak_concurrency"] for p in payloads if p["status"] == "running"][-1] == 3
    assert payloads[-1]["status"] == "succeeded" and payloads[-1]["peak_concurrency"] == 3
    assert (run.executor_pid, run.executor_hostname) == services.executor_identity()[::-1]


def test_a_step_that_cannot_start_fails_with_the_reason_and_is_not_retried():
    tl = task_list(keys=("big", "after"), edges=[("after", "big")])
    Task.objects.filter(key="big").update(retries=3)
    summary, run, runner = run_with(tl, {"big": Script(error="cannot start: the command is too large")})
    assert statuses(run) == {"big": S.FAILED, "after": S.SKIPPED}
    big = WaveTask.objects.get(execution=run, key="big")
    assert big.error == "cannot start: the command is too large"
    assert [s.key for s in runner.launched] == ["big"]
    assert not BuildAgentInstance.objects.filter(execution=run).exists()
    assert_audit_replays(run)


def test_a_wave_whose_steps_were_all_skipped_is_skipped_and_none_is_left_pending():
    tl = task_list(keys=("a", "b", "c"), edges=[("b", "a"), ("c", "b")])
    summary, run, _ = run_with(tl, {"a": Script(exit_code=1)})
    assert wave_statuses(run) == [WaveStatus.FAILED, WaveStatus.SKIPPED, WaveStatus.SKIPPED]


def test_time_waiting_at_a_gate_is_not_charged_to_the_run():
    tl = task_list(keys=("build", "gate", "ship"), edges=[("gate", "build"), ("ship", "gate")])
    Task.objects.filter(key="gate").update(approval=True)
    run = services.run_start(tl)
    runner = FakeRunner()
    waits = []

    def approve_later(r):
        row = WaveTask.objects.get(execution=run, key="gate")
        if row.status == S.WAITING_APPROVAL:
            waits.append(r.polls)
            if len(waits) == 4:
                services.step_decide(run, "gate", approve=True, actor="ann")

    runner.on_poll = approve_later
    engine = Engine(run, runner)
    import time

    real_poll = runner.poll
    runner.poll = lambda timeout: (time.sleep(0.05), real_poll(timeout))[1]
    summary = engine.execute()
    assert summary.status == RunStatus.SUCCEEDED
    assert summary.gate_wait_seconds >= 0.1
    assert summary.speedup == pytest.approx(
        summary.task_seconds / (summary.wall_seconds - summary.gate_wait_seconds)
    )
    run.refresh_from_db()
    assert run.gate_wait_seconds == pytest.approx(summary.gate_wait_seconds)
    gate = TaskStatusAudit.objects.filter(wave_task__key="gate", execution=run).order_by("id")
    assert [a.new_status for a in gate] == ["pending", "waiting_approval", "queued", "running", "succeeded"]
    assert gate[2].actor == "ann"


def test_a_cancel_requested_from_elsewhere_ends_every_step_and_wave():
    tl = task_list(keys=("a", "b", "c", "d"), edges=[("c", "a"), ("d", "c")])
    run = services.run_start(tl)
    runner = FakeRunner()
    runner.held = {"a", "b"}
    runner.on_poll = lambda r: r.polls == 3 and services.run_request_cancel(run, actor="bob")
    summary = Engine(run, runner).execute()
    run.refresh_from_db()
    assert summary.status == run.status == RunStatus.CANCELLED
    assert set(statuses(run).values()) == {S.CANCELLED}
    assert set(wave_statuses(run)) == {WaveStatus.CANCELLED}
    assert sorted(runner.terminated) == ["a#1", "b#1"]
    assert set(BuildAgentInstance.objects.filter(execution=run).values_list("status", flat=True)) == {
        AgentStatus.CANCELLED
    }
    assert_audit_replays(run)


def test_any_error_in_the_loop_closes_the_run_stops_the_processes_and_says_why():
    tl = task_list(keys=("a", "b"))
    run = services.run_start(tl)
    runner = FakeRunner(crash_on_poll=2)
    runner.held = {"a", "b"}
    with pytest.raises(EngineCrash, match="RuntimeError: the runner broke"):
        Engine(run, runner).execute()
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED and "the runner broke" in run.error
    assert runner.closed and sorted(runner.terminated) == ["a#1", "b#1"]
    assert set(statuses(run).values()) == {S.LOST}
    assert set(BuildAgentInstance.objects.filter(execution=run).values_list("status", flat=True)) == {
        AgentStatus.LOST
    }
    assert_audit_replays(run)


def test_an_executor_whose_run_was_closed_elsewhere_stops():
    tl = task_list(keys=("a",))
    run = services.run_start(tl)
    runner = FakeRunner()
    runner.held = {"a"}

    def taken_away(r):
        if r.polls == 2:  # another host's executor, silent for long: whoever sees it closes it
            ExecutionRun.objects.filter(pk=run.pk).update(
                executor_hostname="elsewhere", executor_heartbeat=timezone.now() - timezone.timedelta(hours=1)
            )
            assert services.reap_abandoned_runs() == [run.pk]

    runner.on_poll = taken_away
    engine = Engine(run, runner)
    engine.heartbeat_interval = 0
    with pytest.raises(EngineCrash, match="OwnershipLost"):
        engine.execute()
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED and run.error.startswith("executor stopped without closing")
    assert runner.closed


def test_a_resumed_run_shows_carried_waves_as_they_ended_and_leaves_none_pending():
    tl = task_list(keys=("a", "b", "c"), edges=[("b", "a"), ("c", "b")])
    _, first, _ = run_with(tl, {"b": Script(exit_code=2)})
    assert wave_statuses(first) == [WaveStatus.SUCCEEDED, WaveStatus.FAILED, WaveStatus.SKIPPED]
    resumed = services.run_resume(first)
    old_wave = ParallelExecutionWave.objects.get(execution=first, wave_number=1)
    new_wave = ParallelExecutionWave.objects.get(execution=resumed, wave_number=1)
    assert new_wave.status == WaveStatus.SUCCEEDED
    assert (new_wave.started_at, new_wave.completed_at) == (old_wave.started_at, old_wave.completed_at)
    runner = FakeRunner()
    summary = Engine(resumed, runner).execute()
    assert summary.status == RunStatus.SUCCEEDED
    assert [s.key for s in runner.launched] == ["b", "c"]
    assert wave_statuses(resumed) == [WaveStatus.SUCCEEDED] * 3
    first.refresh_from_db()
    assert first.resumed_by_id == resumed.pk
    assert_audit_replays(resumed)


def test_a_second_resume_of_the_same_run_is_refused_with_the_reason():
    tl = task_list(keys=("a",))
    _, first, _ = run_with(tl, {"a": Script(exit_code=1)})
    second = services.run_resume(first)
    with pytest.raises(services.ServiceError, match=f"already resumed by run {second.pk}; resume run {second.pk}"):
        services.run_resume(first)


def test_outputs_reach_dependents_through_inputs_and_env():
    tl = task_list(keys=("gen", "use"), edges=[("use", "gen")])
    Task.objects.filter(key="use").update(
        command="echo ${steps.gen.outputs.word}",
        inputs={"w": "${steps.gen.outputs.word}", "all": "${steps.gen.outputs}"},
        env={"MODE": "fast"},
    )
    _, run, runner = run_with(tl, {"gen": Script(outputs={"word": "it's $(x)"})})
    spec = runner.launched[1]
    assert spec.command == "echo 'it'\"'\"'s $(x)'"
    assert spec.inputs == {"w": "it's $(x)", "all": {"word": "it's $(x)"}}
    assert spec.env["MODE"] == "fast" and spec.env["TIDEWATCH_STEP"] == "use"
    assert json.loads(json.dumps(spec.inputs)) == spec.inputs


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_dead_executor_s_run_is_reaped_before_a_new_run_joins_a_session():
    dead = services.run_start(task_list("dead", keys=("a", "b", "c", "d")))
    runner = FakeRunner()
    runner.held = {"a", "b", "c", "d"}
    later = {}

    def meanwhile(r):
        if r.polls == 3 and not later:
            # The first executor dies (kill -9 leaves its rows as they were); a new run starts.
            ExecutionRun.objects.filter(pk=dead.pk).update(executor_pid=dead_pid())
            later["run"] = services.run_start(task_list("live", keys=("x", "y", "z")))
            later["summary"] = Engine(later["run"], FakeRunner()).execute()

    runner.on_poll = meanwhile
    with pytest.raises(EngineCrash, match="OwnershipLost"):
        Engine(dead, runner).execute()  # its run was reaped under it: it stops
    dead.refresh_from_db()
    live = ExecutionRun.objects.select_related("session").get(pk=later["run"].pk)
    assert dead.status == RunStatus.FAILED and "executor stopped" in dead.error
    assert live.session_id != dead.session_id
    session = live.session
    assert (session.peak_concurrent_tasks, session.peak_concurrent_agents) == (3, 3)
    assert (session.running_tasks, session.running_agents, session.status) == (0, 0, "completed")
    dead_session = ExecutionRun.objects.get(pk=dead.pk).session
    assert (dead_session.running_tasks, dead_session.running_agents) == (0, 0)
    assert dead_session.status == "failed"


def test_for_each_instances_are_recorded_before_what_the_same_turn_decides_for_them():
    tl = task_list(keys=("gen", "each", "after"), edges=[("each", "gen"), ("after", "each")])
    Task.objects.filter(key="each").update(for_each="${steps.gen.outputs.items}", command="echo ${item}")
    scripts = {"gen": Script(outputs={"items": ["a", "b", "c"]}), "each[1]": Script(exit_code=4)}
    summary, run, runner = run_with(tl, scripts, max_parallelism=2)
    assert statuses(run) == {
        "gen": S.SUCCEEDED, "each": S.FAILED, "each[0]": S.SUCCEEDED, "each[1]": S.FAILED,
        "each[2]": S.SUCCEEDED, "after": S.SKIPPED,
    }  # fmt: skip
    assert [s.command for s in runner.launched if s.key.startswith("each")] == ["echo a", "echo b", "echo c"]
    parent = WaveTask.objects.get(execution=run, key="each")
    assert parent.outputs == [{}, None, {}] and parent.error == "1 of 3 instances did not succeed"
    assert set(WaveTask.objects.filter(parent=parent).values_list("wave_id", flat=True)) == {parent.wave_id}
    assert_audit_replays(run)


@pytest.mark.django_db(transaction=True)
def test_a_long_turn_keeps_the_heartbeat_going_so_the_run_is_never_taken_for_dead(settings):
    """The loop is stuck in one poll for 3 s, three heartbeat intervals: the heartbeat thread
    keeps the run's heartbeat fresh, so another host (which can only judge by the heartbeat)
    does not take the executor for dead, and the run is not reaped."""
    from executions import ownership

    settings.TIDEWATCH = {**settings.TIDEWATCH, "HEARTBEAT_SECONDS": 1, "STALE_AFTER_SECONDS": 2}
    run = services.run_start(task_list(keys=("a",)))
    seen = []

    def stuck(runner):
        if runner.polls == 2:  # the attempt is running: the loop does not turn for 3 s
            for _ in range(6):
                time.sleep(0.5)
                seen.append((timezone.now(), ExecutionRun.objects.get(pk=run.pk)))

    runner = FakeRunner({"a": Script(polls=3)})
    runner.on_poll = stuck
    summary = Engine(run, runner).execute()
    assert summary.status == RunStatus.SUCCEEDED
    assert seen[-1][1].executor_heartbeat > seen[0][1].executor_heartbeat  # it beats while stuck
    for observed_at, seen_run in seen:
        seen_run.executor_hostname = "another-host"  # judged as another host would: by the heartbeat
        assert not ownership.executor_is_gone(seen_run, observed_at)
    assert ownership.executor_is_gone(seen_run, observed_at + timedelta(seconds=3))
    assert ExecutionRun.objects.get(pk=run.pk).status == RunStatus.SUCCEEDED
