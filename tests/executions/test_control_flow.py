"""Control flow with real processes: `when`, `for_each`, `repeat`, approval gates and
`cancel_run` from another process (DESIGN.md "Execution semantics"; issue 10 items 3-4).

Every run is checked by replaying its audit: for each wave task, its TaskStatusAudit rows in
id order chain from no status to the wave task's final status.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path

import pytest
import yaml
from django.core.management import CommandError, call_command

from executions.models import (
    BuildAgentInstance,
    ExecutionRun,
    RunStatus,
    TaskStatus,
    TaskStatusAudit,
    WaveTask,
)
from observability.models import TranscriptEntry
from tests.conftest import ROOT
from tests.executions.helpers import assert_audit_replays, max_overlap, pid_alive, wait_for

S = TaskStatus


# --- helpers -------------------------------------------------------------------------------------


def workflow(tmp_path: Path, name: str, steps: list[dict], **top) -> str:
    """Write a workflow file (`TMP` in strings becomes tmp_path), import it, return its name."""

    def fill(value):
        if isinstance(value, str):
            return value.replace("TMP", str(tmp_path))
        if isinstance(value, list):
            return [fill(v) for v in value]
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        return value

    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, **top, "steps": fill(steps)}, sort_keys=False))
    call_command("import_tasklist", str(path), stdout=StringIO())
    return name


def run_tasklist(*args) -> tuple[dict, int, ExecutionRun]:
    """Run in-process; returns (the --json summary, exit code, the run)."""
    buf = StringIO()
    code = 0
    try:
        call_command("run_tasklist", *map(str, args), "--json", stdout=buf)
    except SystemExit as exc:
        code = exc.code
    summary = json.loads(buf.getvalue().strip().splitlines()[-1])
    run = ExecutionRun.objects.get(pk=summary["run_id"])
    assert_audit_replays(run)
    return summary, code, run


def wts(run: ExecutionRun) -> dict[str, WaveTask]:
    return {wt.key: wt for wt in WaveTask.objects.filter(execution=run).select_related("wave")}


def audit(wt: WaveTask) -> list[TaskStatusAudit]:
    return list(TaskStatusAudit.objects.filter(wave_task=wt).order_by("id"))


def executor(child_env, *args) -> subprocess.Popen:
    """`manage.py run_tasklist ... --json` in a child process against the test database."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "run_tasklist", *map(str, args), "--json"],
        env=child_env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def newest_run(name: str, exclude: int | None = None) -> ExecutionRun | None:
    qs = ExecutionRun.objects.filter(task_list__title=name)
    if exclude:
        qs = qs.exclude(pk=exclude)
    return qs.order_by("-pk").first()


def status_of(run_id: int, key: str) -> str | None:
    return WaveTask.objects.filter(execution_id=run_id, key=key).values_list("status", flat=True).first()


def finish(proc: subprocess.Popen, timeout: float = 30) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"executor did not finish:\n{out}\n{err}")
    return proc.returncode, out, err


# --- when ------------------------------------------------------------------------------------------


def output(obj) -> str:
    """A shell command writing `obj` as the step's outputs."""
    return f"echo '{json.dumps(obj)}' > \"$TIDEWATCH_OUTPUT\""


@pytest.mark.django_db
def test_when_false_skips_with_reason_and_dependents_follow_join_policy(tmp_path):
    name = workflow(
        tmp_path,
        "when-false",
        [
            {"id": "check", "run": output({"count": 0})},
            {
                "id": "publish",
                "depends_on": ["check"],
                "when": "steps.check.outputs.count > 0",
                "run": "touch TMP/published",
            },
            {"id": "after_all", "depends_on": ["publish"], "run": "touch TMP/after_all"},
            {
                "id": "after_always",
                "depends_on": ["publish"],
                "join_policy": "always",
                "run": "touch TMP/after_always",
            },
        ],
    )
    summary, code, run = run_tasklist(name)
    tasks = wts(run)
    assert tasks["check"].status == S.SUCCEEDED
    assert tasks["publish"].status == S.SKIPPED
    assert audit(tasks["publish"])[-1].reason == "condition false"
    assert not BuildAgentInstance.objects.filter(wave_task=tasks["publish"]).exists()
    assert not (tmp_path / "published").exists()
    assert tasks["after_all"].status == S.SKIPPED
    assert tasks["after_always"].status == S.SUCCEEDED
    assert (tmp_path / "after_always").exists() and not (tmp_path / "after_all").exists()
    assert code == 0 and summary["status"] == RunStatus.SUCCEEDED


@pytest.mark.django_db
@pytest.mark.parametrize("ok", [True, False])
def test_if_else_joined_with_any_runs_one_branch_then_the_join(tmp_path, ok):
    name = workflow(
        tmp_path,
        f"if-else-{ok}",
        [
            {"id": "check", "run": output({"ok": ok})},
            {
                "id": "then",
                "depends_on": ["check"],
                "when": "steps.check.outputs.ok == true",
                "run": "echo then >> TMP/branches",
            },
            {
                "id": "otherwise",
                "depends_on": ["check"],
                "when": "steps.check.outputs.ok == false",
                "run": "echo otherwise >> TMP/branches",
            },
            {
                "id": "join",
                "depends_on": ["then", "otherwise"],
                "join_policy": "any",
                "run": "echo join >> TMP/branches",
            },
            {"id": "join_all", "depends_on": ["then", "otherwise"], "run": "echo join_all >> TMP/branches"},
        ],
    )
    summary, code, run = run_tasklist(name)
    tasks = wts(run)
    taken, other = ("then", "otherwise") if ok else ("otherwise", "then")
    assert tasks[taken].status == S.SUCCEEDED
    assert tasks[other].status == S.SKIPPED
    assert audit(tasks[other])[-1].reason == "condition false"
    assert tasks["join"].status == S.SUCCEEDED
    assert tasks["join_all"].status == S.SKIPPED
    assert (tmp_path / "branches").read_text().split() == [taken, "join"]
    assert code == 0


@pytest.mark.django_db
def test_when_false_on_a_gate_and_a_for_each_skips_without_waiting_or_expanding(tmp_path):
    name = workflow(
        tmp_path,
        "when-constructs",
        [
            {"id": "check", "run": output({"go": False, "items": [1, 2]})},
            {
                "id": "gate",
                "depends_on": ["check"],
                "when": "steps.check.outputs.go",
                "approval": True,
                "run": "true",
            },
            {
                "id": "fan",
                "when": "steps.check.outputs.go",
                "for_each": "${steps.check.outputs.items}",
                "run": "echo ${item}",
            },
            {"id": "after_fan", "depends_on": ["fan"], "join_policy": "always", "run": "true"},
        ],
    )
    summary, code, run = run_tasklist(name)
    assert code == 0, summary
    tasks = wts(run)
    assert set(tasks) == {"check", "gate", "fan", "after_fan"}
    for key in ("gate", "fan"):
        assert [(a.new_status, a.reason) for a in audit(tasks[key])][-1] == (S.SKIPPED, "condition false")
        assert S.WAITING_APPROVAL not in [a.new_status for a in audit(tasks[key])]
    assert tasks["after_fan"].status == S.SUCCEEDED


# --- for_each --------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_for_each_literal_list_instances_limits_and_ordered_outputs(tmp_path):
    items = [0.4, 0.1, 0.3, 0.1, 0.2]
    name = workflow(
        tmp_path,
        "fan-literal",
        [
            {
                "id": "fan",
                "for_each": items,
                "max_parallelism": 2,
                "run": 'sleep ${item}; echo "item=${item}"; echo "{\\"v\\": ${item}}" > "$TIDEWATCH_OUTPUT"',
            },
            {
                "id": "collect",
                "inputs": {"values": "${steps.fan.outputs}"},
                "run": 'cp "$TIDEWATCH_INPUTS" "$TIDEWATCH_OUTPUT"',
            },
        ],
        max_parallelism=4,
    )
    summary, code, run = run_tasklist(name)
    assert code == 0, summary
    tasks = wts(run)
    fan = tasks["fan"]
    instances = [tasks[f"fan[{i}]"] for i in range(len(items))]
    assert fan.status == S.SUCCEEDED
    assert {k for k in tasks if k.startswith("fan[")} == {f"fan[{i}]" for i in range(len(items))}
    intervals = []
    for i, inst in enumerate(instances):
        assert inst.status == S.SUCCEEDED
        assert inst.parent_id == fan.pk and inst.item_index == i and inst.item == items[i]
        assert inst.wave_id == fan.wave_id
        agents = list(BuildAgentInstance.objects.filter(wave_task=inst))
        assert len(agents) == 1 and agents[0].wave_id == fan.wave_id
        intervals.append((agents[0].started_at, agents[0].completed_at))
        # The first two take the two free slots at once; the others wait in queued.
        waited = [S.QUEUED] if i >= 2 else []
        assert [a.new_status for a in audit(inst)] == [S.PENDING, *waited, S.RUNNING, S.SUCCEEDED]
        lines = TranscriptEntry.objects.filter(wave_task=inst, entry_type="stdout").values_list(
            "content", flat=True
        )
        assert list(lines) == [f"item={items[i]}"]
    # One agent per instance (and one for collect), each with its own id.
    agents = BuildAgentInstance.objects.filter(execution=run)
    assert len({a.instance_id for a in agents}) == agents.count() == len(items) + 1
    assert max_overlap(intervals) == 2
    expected = [{"v": v} for v in items]
    assert fan.outputs == expected
    assert tasks["collect"].outputs == {"values": expected}


@pytest.mark.django_db
def test_for_each_over_upstream_output_in_item_order(tmp_path):
    name = workflow(
        tmp_path,
        "fan-upstream",
        [
            {"id": "gen", "run": output({"regions": ["eu", "us", "ap"]})},
            {
                "id": "load",
                "for_each": "${steps.gen.outputs.regions}",
                "run": "case ${item} in eu) sleep 0.3;; us) sleep 0.1;; esac; r=$(echo ${item} | tr a-z A-Z); "
                'echo "{\\"region\\": \\"$r\\"}" > "$TIDEWATCH_OUTPUT"',
            },
            {
                "id": "report",
                "depends_on": ["load"],
                "inputs": {"loaded": "${steps.load.outputs}"},
                "run": 'cp "$TIDEWATCH_INPUTS" "$TIDEWATCH_OUTPUT"; echo "$TIDEWATCH_INPUT_LOADED"',
            },
        ],
    )
    summary, code, run = run_tasklist(name)
    assert code == 0, summary
    tasks = wts(run)
    assert [tasks[f"load[{i}]"].item for i in range(3)] == ["eu", "us", "ap"]
    assert "load[3]" not in tasks
    assert all(tasks[f"load[{i}]"].wave_id == tasks["load"].wave_id for i in range(3))
    expected = [{"region": "EU"}, {"region": "US"}, {"region": "AP"}]
    assert tasks["load"].outputs == expected
    assert tasks["report"].outputs == {"loaded": expected}
    env_line = TranscriptEntry.objects.get(wave_task=tasks["report"], entry_type="stdout").content
    assert json.loads(env_line) == expected


@pytest.mark.django_db
def test_for_each_item_is_shell_quoted_never_executed(tmp_path):
    target = tmp_path / "pwned"
    evil = [f"$(touch {target})", f"`touch {target}`", f"x; touch {target}", "it's", "$HOME"]
    name = workflow(tmp_path, "fan-quoting", [{"id": "fan", "for_each": evil, "run": "echo ${item}"}])
    summary, code, run = run_tasklist(name)
    assert code == 0, summary
    tasks = wts(run)
    for i, item in enumerate(evil):
        lines = TranscriptEntry.objects.filter(wave_task=tasks[f"fan[{i}]"], entry_type="stdout")
        assert [e.content for e in lines] == [item]
    assert not target.exists()


@pytest.mark.django_db
def test_for_each_failed_instance_fails_step_and_resume_reruns_only_it(tmp_path):
    name = workflow(
        tmp_path,
        "fan-resume",
        [
            {
                "id": "fan",
                "for_each": ["a", "b", "c"],
                "run": "echo x >> TMP/runs-${item}; test ${item} != b || test -e TMP/fixed",
            },
            {"id": "after", "depends_on": ["fan"], "run": "true"},
        ],
    )
    summary, code, run = run_tasklist(name)
    assert code == 1 and summary["status"] == RunStatus.FAILED
    tasks = wts(run)
    assert [tasks[f"fan[{i}]"].status for i in range(3)] == [S.SUCCEEDED, S.FAILED, S.SUCCEEDED]
    assert tasks["fan"].status == S.FAILED
    assert tasks["after"].status == S.SKIPPED
    counts = {x: len((tmp_path / f"runs-{x}").read_text().split()) for x in "abc"}
    assert counts == {"a": 1, "b": 1, "c": 1}

    (tmp_path / "fixed").touch()
    summary2, code2, run2 = run_tasklist("--resume", run.pk)
    assert code2 == 0, summary2
    tasks2 = wts(run2)
    assert all(t.status == S.SUCCEEDED for t in tasks2.values()), {k: t.status for k, t in tasks2.items()}
    assert set(tasks2) == {"fan", "fan[0]", "fan[1]", "fan[2]", "after"}
    counts = {x: len((tmp_path / f"runs-{x}").read_text().split()) for x in "abc"}
    assert counts == {"a": 1, "b": 2, "c": 1}
    # Only the failed instance (and the skipped dependent) got an agent in the resumed run.
    relaunched = BuildAgentInstance.objects.filter(execution=run2).values_list("wave_task__key", flat=True)
    assert sorted(relaunched) == ["after", "fan[1]"]
    assert len(tasks2["fan"].outputs) == 3


@pytest.mark.django_db
def test_for_each_over_a_non_list_fails_that_step_only(tmp_path):
    name = workflow(
        tmp_path,
        "fan-not-list",
        [
            {"id": "gen", "run": output({"regions": "eu"})},
            {"id": "load", "for_each": "${steps.gen.outputs.regions}", "run": "echo ${item}"},
            {"id": "after_load", "depends_on": ["load"], "run": "true"},
            {"id": "independent", "run": "sleep 0.2; touch TMP/independent"},
            {"id": "after_gen", "depends_on": ["gen"], "run": "true"},
        ],
    )
    summary, code, run = run_tasklist(name)
    assert code == 1 and summary["status"] == RunStatus.FAILED
    tasks = wts(run)
    assert tasks["load"].status == S.FAILED
    assert "must be a list" in tasks["load"].error
    assert not any(k.startswith("load[") for k in tasks)
    assert tasks["after_load"].status == S.SKIPPED
    for key in ("gen", "independent", "after_gen"):
        assert tasks[key].status == S.SUCCEEDED, key
    assert (tmp_path / "independent").exists()


@pytest.mark.django_db
def test_for_each_join_any_tolerates_a_failed_instance_and_empty_list_succeeds(tmp_path):
    name = workflow(
        tmp_path,
        "fan-any",
        [
            {
                "id": "fan",
                "for_each": [1, 2, 3],
                "join_policy": "any",
                "run": f"test ${{item}} != 2 && {output({'ok': True})}",
            },
            {"id": "none", "for_each": [], "run": "echo never"},
            {
                "id": "after",
                "inputs": {"fan": "${steps.fan.outputs}", "none": "${steps.none.outputs}"},
                "run": 'cp "$TIDEWATCH_INPUTS" "$TIDEWATCH_OUTPUT"',
            },
        ],
    )
    summary, code, run = run_tasklist(name)
    tasks = wts(run)
    assert [tasks[f"fan[{i}]"].status for i in range(3)] == [S.SUCCEEDED, S.FAILED, S.SUCCEEDED]
    assert tasks["fan"].status == S.SUCCEEDED
    assert tasks["none"].status == S.SUCCEEDED and tasks["none"].outputs == []
    assert tasks["after"].status == S.SUCCEEDED
    assert tasks["after"].outputs == {"fan": [{"ok": True}, None, {"ok": True}], "none": []}


# --- repeat ----------------------------------------------------------------------------------------

COUNTER = (
    "n=$(cat TMP/counter 2>/dev/null || echo 0); n=$((n + 1)); echo $n > TMP/counter; "
    'echo "{\\"n\\": $n}" > "$TIDEWATCH_OUTPUT"'
)


@pytest.mark.django_db
def test_repeat_until_met_each_iteration_an_attempt_with_delay(tmp_path):
    delay = 0.3
    name = workflow(
        tmp_path,
        "repeat-met",
        [
            {
                "id": "poll",
                "repeat": {"until": "steps.poll.outputs.n >= 3", "max_iterations": 5, "delay": delay},
                "run": COUNTER,
            },
            {
                "id": "after",
                "inputs": {"n": "${steps.poll.outputs.n}"},
                "run": 'cp "$TIDEWATCH_INPUTS" "$TIDEWATCH_OUTPUT"',
            },
        ],
    )
    start = time.monotonic()
    summary, code, run = run_tasklist(name)
    wall = time.monotonic() - start
    assert code == 0, summary
    tasks = wts(run)
    poll = tasks["poll"]
    assert poll.status == S.SUCCEEDED and poll.outputs == {"n": 3} and poll.attempt == 3
    assert (tmp_path / "counter").read_text().strip() == "3"
    assert [a.attempt for a in audit(poll) if a.new_status == S.RUNNING] == [1, 2, 3]
    assert BuildAgentInstance.objects.filter(wave_task=poll).count() == 3
    assert tasks["after"].outputs == {"n": 3}
    assert wall >= delay * 2
    starts = sorted(BuildAgentInstance.objects.filter(wave_task=poll).values_list("started_at", flat=True))
    assert all((b - a).total_seconds() >= delay * 0.9 for a, b in zip(starts, starts[1:], strict=False))


@pytest.mark.django_db
def test_repeat_until_not_met_fails_with_reason(tmp_path):
    name = workflow(
        tmp_path,
        "repeat-unmet",
        [
            {
                "id": "poll",
                "repeat": {"until": "steps.poll.outputs.n >= 100", "max_iterations": 2},
                "run": COUNTER,
            },
            {"id": "after", "depends_on": ["poll"], "run": "true"},
        ],
    )
    summary, code, run = run_tasklist(name)
    assert code == 1
    tasks = wts(run)
    poll = tasks["poll"]
    assert poll.status == S.FAILED
    last = audit(poll)[-1]
    assert last.new_status == S.FAILED and "until not met" in last.reason
    assert "until not met" in poll.error
    assert [a.attempt for a in audit(poll) if a.new_status == S.RUNNING] == [1, 2]
    assert (tmp_path / "counter").read_text().strip() == "2"
    assert tasks["after"].status == S.SKIPPED


# --- approval gates ----------------------------------------------------------------------------------

GATED = [
    {"id": "gate", "approval": True, "run": "echo gated >> TMP/gate"},
    {"id": "after", "depends_on": ["gate"], "run": "touch TMP/after"},
    {"id": "side", "run": "sleep 0.3; touch TMP/side"},
    {"id": "side2", "depends_on": ["side"], "run": "touch TMP/side2"},
]


def start_gated(tmp_path, child_env, name):
    workflow(tmp_path, name, GATED)
    proc = executor(child_env, name)
    run = wait_for(lambda: newest_run(name), what="the run")
    wait_for(lambda: status_of(run.pk, "gate") == S.WAITING_APPROVAL, what="gate waiting")
    return proc, run


@pytest.mark.django_db(transaction=True)
def test_approval_waits_while_other_branches_run_then_approve_step_from_another_process(
    tmp_path, child_env, manage
):
    proc, run = start_gated(tmp_path, child_env, "gated-approve")
    # The independent branch runs to the end while the gate waits.
    wait_for(lambda: status_of(run.pk, "side2") == S.SUCCEEDED, what="side branch done")
    assert status_of(run.pk, "gate") == S.WAITING_APPROVAL
    assert status_of(run.pk, "after") == S.PENDING
    assert not (tmp_path / "gate").exists()
    time.sleep(0.3)
    assert proc.poll() is None, "the executor keeps waiting for the approval"

    result = manage("approve_step", run.pk, "gate", "--by", "alice")
    assert result.returncode == 0, result.stderr
    assert "approved by alice" in result.stdout
    code, out, err = finish(proc)
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["status"] == RunStatus.SUCCEEDED
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    tasks = wts(run)
    gate = tasks["gate"]
    assert gate.status == S.SUCCEEDED and tasks["after"].status == S.SUCCEEDED
    assert gate.approval_decision == "approved" and gate.approved_by == "alice" and gate.approved_at
    rows = audit(gate)
    assert [r.new_status for r in rows] == [S.PENDING, S.WAITING_APPROVAL, S.QUEUED, S.RUNNING, S.SUCCEEDED]
    approved = rows[2]
    assert approved.actor == "alice" and approved.reason == "approved"
    assert approved.previous_status == S.WAITING_APPROVAL
    # The side branch finished before anyone approved.
    side_done = audit(tasks["side2"])[-1].changed_at
    assert side_done <= approved.changed_at
    assert (tmp_path / "gate").read_text().split() == ["gated"]
    assert_audit_replays(run)


@pytest.mark.django_db(transaction=True)
def test_run_tasklist_names_the_waiting_gate_and_the_command_that_approves_it(tmp_path, child_env, manage):
    workflow(tmp_path, "gated-told", GATED)
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "run_tasklist", "gated-told"],  # no --json: the bar
        env=child_env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    run = wait_for(lambda: newest_run("gated-told"), what="the run")
    wait_for(lambda: status_of(run.pk, "gate") == S.WAITING_APPROVAL, what="gate waiting")
    assert manage("approve_step", run.pk, "gate").returncode == 0
    code, out, err = finish(proc)
    assert code == 0, err
    told = [line for line in err.splitlines() if "waits for approval" in line]
    assert told == [
        f"step gate waits for approval: python manage.py approve_step {run.pk} gate  (add --reject to reject it)"
    ]
    assert f"run {run.pk} succeeded" in out


@pytest.mark.django_db(transaction=True)
def test_reject_fails_the_gate_and_skips_its_dependents(tmp_path, child_env, manage):
    proc, run = start_gated(tmp_path, child_env, "gated-reject")
    result = manage("approve_step", run.pk, "gate", "--reject", "--by", "bob")
    assert result.returncode == 0, result.stderr
    code, out, err = finish(proc)
    assert code == 1, err
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    tasks = wts(run)
    assert tasks["gate"].status == S.FAILED
    assert tasks["gate"].approval_decision == "rejected" and tasks["gate"].approved_by == "bob"
    assert "rejected by bob" in tasks["gate"].error
    last = audit(tasks["gate"])[-1]
    assert (last.previous_status, last.new_status, last.actor, last.reason) == (
        S.WAITING_APPROVAL,
        S.FAILED,
        "bob",
        "rejected",
    )
    assert tasks["after"].status == S.SKIPPED
    assert tasks["side"].status == S.SUCCEEDED and tasks["side2"].status == S.SUCCEEDED
    assert not (tmp_path / "gate").exists() and not (tmp_path / "after").exists()
    assert not BuildAgentInstance.objects.filter(wave_task=tasks["gate"]).exists()
    assert_audit_replays(run)


@pytest.mark.django_db(transaction=True)
def test_approve_step_refuses_non_gate_and_unknown_steps(tmp_path, manage):
    from executions.services import run_start
    from waves.models import TaskList

    workflow(tmp_path, "gated-errors", GATED)
    run = run_start(TaskList.objects.get(title="gated-errors"))
    not_gate = manage("approve_step", run.pk, "side", "--by", "alice")
    assert not_gate.returncode != 0
    assert "not an approval step" in not_gate.stderr and "'side'" in not_gate.stderr
    with pytest.raises(CommandError, match="has no step 'nope'") as unknown:
        call_command("approve_step", run.pk, "nope", "--by", "alice", stdout=StringIO())
    assert unknown.value.returncode != 0
    with pytest.raises(CommandError, match="run 999999 does not exist") as no_run:
        call_command("approve_step", 999999, "gate", stdout=StringIO())
    assert no_run.value.returncode != 0
    # Nothing was recorded by the refusals.
    assert not WaveTask.objects.filter(execution=run).exclude(approval_decision="").exists()
    assert TaskStatusAudit.objects.filter(execution=run).exclude(new_status=S.PENDING).count() == 0


@pytest.mark.django_db(transaction=True)
def test_killed_executor_leaves_gate_waiting_and_resume_keeps_waiting(tmp_path, child_env, manage):
    proc, run = start_gated(tmp_path, child_env, "gated-killed")
    wait_for(lambda: status_of(run.pk, "side2") == S.SUCCEEDED, what="side branch done")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stdout.close()
    proc.stderr.close()
    time.sleep(0.3)
    assert status_of(run.pk, "gate") == S.WAITING_APPROVAL

    resumed = executor(child_env, "--resume", run.pk)
    run2 = wait_for(lambda: newest_run("gated-killed", exclude=run.pk), what="the resumed run")
    wait_for(lambda: status_of(run2.pk, "gate") == S.WAITING_APPROVAL, what="gate waiting again")
    # The old run's gate still waits; succeeded steps are carried over, not re-run.
    assert status_of(run.pk, "gate") == S.WAITING_APPROVAL
    time.sleep(0.4)
    assert resumed.poll() is None
    assert not (tmp_path / "gate").exists()

    result = manage("approve_step", run2.pk, "gate", "--by", "alice")
    assert result.returncode == 0, result.stderr
    code, out, err = finish(resumed)
    assert code == 0, err
    run2.refresh_from_db()
    assert run2.status == RunStatus.SUCCEEDED and run2.resumed_from_id == run.pk
    tasks = wts(run2)
    assert all(t.status == S.SUCCEEDED for t in tasks.values())
    assert sorted(
        BuildAgentInstance.objects.filter(execution=run2).values_list("wave_task__key", flat=True)
    ) == [
        "after",
        "gate",
    ]
    approved = [r for r in audit(tasks["gate"]) if r.reason == "approved"]
    assert len(approved) == 1 and approved[0].actor == "alice"
    run.refresh_from_db()
    assert run.status in RunStatus.terminal()
    assert_audit_replays(run)
    assert_audit_replays(run2)


# --- cancel from another process ----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_cancel_run_from_another_process_stops_everything(tmp_path, child_env, manage):
    pids = tmp_path / "pids"
    name = workflow(
        tmp_path,
        "cancel-me",
        [
            {"id": "long", "run": f'sleep 30 & echo "$$ $!" > {pids}.tmp; mv {pids}.tmp {pids}; wait'},
            {"id": "long2", "run": "sleep 30"},
            {"id": "later", "depends_on": ["long"], "run": "touch TMP/later"},
            {"id": "quick", "run": "true"},
        ],
    )
    proc = executor(child_env, name)
    run = wait_for(lambda: newest_run(name), what="the run")
    wait_for(pids.exists, what="the pids file")
    wait_for(lambda: status_of(run.pk, "long2") == S.RUNNING, what="long2 running")
    shell_pid, child_pid = map(int, pids.read_text().split())
    assert pid_alive(shell_pid) and pid_alive(child_pid)

    # cancel_run in its own process; the clock starts when its request is recorded (a child
    # Django process can take seconds to start on a loaded machine).
    canceller = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "cancel_run", str(run.pk), "--by", "carol"],
        env=child_env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(
        lambda: ExecutionRun.objects.filter(pk=run.pk, cancel_requested_at__isnull=False).exists(),
        timeout=60,
        interval=0.01,
        what="the cancel request",
    )
    requested = time.monotonic()
    c_code, c_out, c_err = finish(canceller)
    took = time.monotonic() - requested
    assert c_code == 0, c_err
    assert f"run {run.pk} cancelled" in c_out
    assert took < 20, f"cancel_run took {took:.2f}s after its request: it waited for the tasks' own end"
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED
    assert run.cancel_requested_by == "carol"
    assert (run.completed_at - run.cancel_requested_at).total_seconds() < 20  # not the tasks' 30 s
    wait_for(lambda: not pid_alive(shell_pid) and not pid_alive(child_pid), timeout=10, what="pids gone")

    code, out, err = finish(proc)
    assert code == 1, err
    tasks = wts(run)
    assert tasks["quick"].status == S.SUCCEEDED
    for key in ("long", "long2", "later"):
        assert tasks[key].status == S.CANCELLED, (key, tasks[key].status)
        assert tasks[key].completed_at is not None
    assert not BuildAgentInstance.objects.filter(wave_task=tasks["later"]).exists()
    assert not BuildAgentInstance.objects.filter(execution=run, status="running").exists()
    assert not (tmp_path / "later").exists()
    last = audit(tasks["long"])[-1]
    assert last.actor == "carol" and "cancel" in last.reason
    # Recorded soon after the request, not when the tasks' own `sleep 30` would have ended.
    cancelled_at = max(audit(tasks[k])[-1].changed_at for k in ("long", "long2", "later"))
    assert (cancelled_at - run.cancel_requested_at).total_seconds() < 20
    assert_audit_replays(run)


@pytest.mark.django_db(transaction=True)
def test_a_cancel_settles_waiting_instances_steps_and_dependents_together(tmp_path, child_env):
    items = list(range(6))
    name = workflow(
        tmp_path,
        "cancel-fan",
        [
            {"id": "fan", "for_each": items, "max_parallelism": 1, "run": "sleep 30"},
            {"id": "after", "depends_on": ["fan"], "run": "touch TMP/after"},
            {"id": "other", "run": "sleep 30"},
            {"id": "queued", "run": "touch TMP/queued"},
        ],
        max_parallelism=2,
    )
    proc = executor(child_env, name)
    run = wait_for(lambda: newest_run(name), what="the run")
    wait_for(lambda: status_of(run.pk, "fan[0]") == S.RUNNING, what="fan[0] running", proc=proc)
    wait_for(lambda: status_of(run.pk, "queued") == S.QUEUED, what="a step waiting for a slot", proc=proc)
    proc.send_signal(signal.SIGTERM)
    code, out, err = finish(proc)
    assert code == 1, err
    assert json.loads(out)["status"] == "cancelled"
    tasks = wts(run)
    assert {k: wt.status for k, wt in tasks.items()} == {
        "fan": S.CANCELLED,
        **{f"fan[{i}]": S.CANCELLED for i in items},
        "after": S.CANCELLED,
        "other": S.CANCELLED,
        "queued": S.CANCELLED,
    }
    assert all(wt.completed_at is not None for wt in tasks.values())
    # The five instances that never started were cancelled by one change, with one reason.
    rows = TaskStatusAudit.objects.filter(
        execution=run, new_status=S.CANCELLED, wave_task__parent__isnull=False
    )
    never_started = rows.filter(previous_status=S.QUEUED)
    assert never_started.count() == 5
    assert len({(r.changed_at, r.reason) for r in never_started}) == 1
    assert not (tmp_path / "after").exists() and not (tmp_path / "queued").exists()
    assert_audit_replays(run)
