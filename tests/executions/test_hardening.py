"""Whatever a task hands back, the executor survives it: the task that produced something
unusable fails with the reason (or its line is kept as an invalid event), the run goes on
and ends, and nothing stays `running`. Real processes, on SQLite and PostgreSQL."""

import json
import os
import signal
import time

import pytest

from executions.models import (
    AgentStatus,
    BuildAgentInstance,
    ExecutionRun,
    RunStatus,
    TaskStatus,
    WaveTask,
)
from observability.models import TranscriptEntry
from tests.executions.helpers import assert_audit_replays, wait_for
from tests.executions.test_engine import importing, run_list, spawn_executor

S = TaskStatus
pytestmark = pytest.mark.django_db


def statuses(run_id) -> dict[str, str]:
    return dict(WaveTask.objects.filter(execution_id=run_id).values_list("key", "status"))


def ended_cleanly(summary) -> ExecutionRun:
    run = ExecutionRun.objects.get(pk=summary["run_id"])
    assert run.status in (RunStatus.SUCCEEDED, RunStatus.FAILED) and run.completed_at
    assert not WaveTask.objects.filter(execution=run, status__in=[S.RUNNING, S.QUEUED, S.PENDING]).exists()
    assert not BuildAgentInstance.objects.filter(execution=run, status=AgentStatus.RUNNING).exists()
    assert_audit_replays(run)
    return run


def error_of(run, key) -> str:
    return WaveTask.objects.get(execution=run, key=key).error


def test_an_output_with_a_nul_character_fails_its_task_even_unused(tmp_path):
    name = importing(
        tmp_path,
        "nul",
        [
            {"id": "gen", "run": 'printf \'{"unused": "a\\\\u0000b", "ok": 1}\' > "$TIDEWATCH_OUTPUT"'},
            {"id": "after", "run": "echo after", "depends_on": ["gen"]},
            {"id": "other", "run": "echo other"},
        ],
    )
    code, summary = run_list(name)
    run = ended_cleanly(summary)
    assert code == 1 and statuses(run.pk) == {"gen": S.FAILED, "after": S.SKIPPED, "other": S.SUCCEEDED}
    assert "unused holds a NUL character" in error_of(run, "gen")


def test_a_value_too_large_for_a_command_line_fails_the_step_that_uses_it(tmp_path):
    name = importing(
        tmp_path,
        "too-long",
        [
            {
                "id": "gen",
                "run": 'python3 -c "import json,os; json.dump({\'big\': \'x\' * 300000}, open(os.environ[\'TIDEWATCH_OUTPUT\'], \'w\'))"',
            },
            {"id": "cmd", "run": "echo ${steps.gen.outputs.big} | wc -c", "depends_on": ["gen"]},
            {
                "id": "env",
                "run": 'printf %s "$BIG" | wc -c',
                "env": {"BIG": "${steps.gen.outputs.big}"},
                "depends_on": ["gen"],
            },
            {
                "id": "file",
                "run": 'python3 -c "import json,os; print(len(json.load(open(os.environ[\'TIDEWATCH_INPUTS\']))[\'big\']))"',
                "inputs": {"big": "${steps.gen.outputs.big}"},
                "depends_on": ["gen"],
            },
        ],
    )
    code, summary = run_list(name)
    run = ended_cleanly(summary)
    assert code == 1
    assert statuses(run.pk) == {"gen": S.SUCCEEDED, "cmd": S.FAILED, "env": S.FAILED, "file": S.SUCCEEDED}
    for key in ("cmd", "env"):
        assert "too long" in error_of(run, key).lower() or "limit" in error_of(run, key).lower()
    out = TranscriptEntry.objects.filter(execution=run, wave_task__key="file", entry_type="stdout")
    assert list(out.values_list("content", flat=True)) == ["300000"]


@pytest.mark.parametrize("number", ["1e309", "-1e309", "NaN", "Infinity"])
def test_an_event_number_that_overflows_is_kept_as_an_invalid_event(tmp_path, number):
    line = '{"type": "assertion", "name": "n", "passed": true, "details": {"x": NUMBER}}'.replace("NUMBER", number)
    name = importing(tmp_path, "overflow", [{"id": "ev", "run": f"echo '{line}' >> \"$TIDEWATCH_EVENTS\""}])
    code, summary = run_list(name)
    run = ended_cleanly(summary)
    assert code == 0 and statuses(run.pk) == {"ev": S.SUCCEEDED}
    invalid = TranscriptEntry.objects.get(execution=run, entry_type="invalid_event")
    assert number in invalid.content


def test_a_million_event_lines_and_a_huge_line_are_capped_and_the_run_ends(tmp_path, settings):
    settings.TIDEWATCH = {**settings.TIDEWATCH, "EVENTS_MAX_LINES": 100}
    script = (
        'yes "not json" | head -n 1000000 >> "$TIDEWATCH_EVENTS";'
        ' head -c 5000000 /dev/zero | tr "\\0" x; echo'
    )
    name = importing(tmp_path, "flood", [{"id": "flood", "run": script}])
    code, summary = run_list(name)
    run = ended_cleanly(summary)
    assert code == 0
    assert TranscriptEntry.objects.filter(execution=run, entry_type="invalid_event").count() == 100
    system = " ".join(TranscriptEntry.objects.filter(execution=run, entry_type="system").values_list("content", flat=True))
    assert "999900 event line(s) past the cap of 100 lines" in system
    longest = max(len(c) for c in TranscriptEntry.objects.filter(execution=run).values_list("content", flat=True))
    assert longest <= settings.TIDEWATCH["TRANSCRIPT_ENTRY_MAX_BYTES"] + 200


@pytest.mark.django_db(transaction=True)
def test_an_attempt_that_finished_while_its_executor_was_frozen_then_killed_is_not_run_again(
    tmp_path, child_env, manage
):
    """Freeze the executor just after the task exits (SIGSTOP), then kill -9 it: the task's
    exit was never seen, but its attempt left .exitcode and its outputs, so the resume
    records it as succeeded, passes its outputs on and does not run it again."""
    runs = tmp_path / "runs"
    release = tmp_path / "release"
    name = importing(
        tmp_path,
        "frozen",
        [
            {
                "id": "once",
                "run": f'echo x >> {runs}; while ! test -e {release}; do sleep 0.02; done;'
                ' echo \'{"n": 42}\' > "$TIDEWATCH_OUTPUT"',
            },
            {"id": "next", "run": "echo got ${steps.once.outputs.n}", "depends_on": ["once"]},
        ],
    )
    proc = spawn_executor(child_env, name)
    wait_for(lambda: runs.exists(), proc=proc, what="the task to start")
    run = ExecutionRun.objects.get(task_list__title=name)
    wait_for(lambda: WaveTask.objects.filter(execution=run, key="once", status=S.RUNNING).exists())
    os.kill(proc.pid, signal.SIGSTOP)
    release.touch()
    work = tmp_path / "var" / "work" / f"run-{run.pk}" / "once.attempt-1"
    wait_for(lambda: (work / ".exitcode").exists(), what=".exitcode")
    time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    result = manage("run_tasklist", "--resume", run.pk, "--json", timeout=60)  # at once: no stale wait
    assert result.returncode == 0, result.stderr
    resumed = ExecutionRun.objects.get(pk=json.loads(result.stdout)["run_id"])
    assert runs.read_text() == "x\n"  # run once, never again
    once = WaveTask.objects.get(execution=resumed, key="once")
    assert (once.status, once.outputs, once.attempt) == (S.SUCCEEDED, {"n": 42}, 1)
    assert not BuildAgentInstance.objects.filter(execution=resumed, task__key="once").exists()
    stdout = TranscriptEntry.objects.filter(execution=resumed, wave_task__key="next", entry_type="stdout")
    assert list(stdout.values_list("content", flat=True)) == ["got 42"]
    assert resumed.status == RunStatus.SUCCEEDED
    assert_audit_replays(resumed)
