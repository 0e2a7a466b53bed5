"""Every command exits 2 on bad arguments and on something not found, without a traceback,
whatever the id (PostgreSQL raises on values past a bigint: they must never reach a query)."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from executions.models import ExecutionRun, RunStatus, TaskStatus, WaveTask
from tests.factories import run_with_waves, task_list
from waves.models import Task

pytestmark = pytest.mark.django_db

HUGE = "99999999999999999999"  # past a signed 64-bit integer
JUST_PAST = str(2**63)


def call(*args):
    return call_command(*map(str, args), stdout=StringIO(), stderr=StringIO())


def exit_code_of(*args) -> tuple[int, str]:
    with pytest.raises(CommandError) as err:
        call(*args)
    return err.value.returncode, str(err.value)


# --- in process ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ghost", HUGE, JUST_PAST, "١٢"])  # the last: Arabic-Indic digits
def test_plan_of_an_unknown_list_exits_2(name):
    assert exit_code_of("plan_tasklist", name) == (2, f"no task list with id or name '{name}'")


@pytest.mark.parametrize("command", ["run_status", "cancel_run"])
@pytest.mark.parametrize("run_id", ["424242", HUGE, JUST_PAST, "0"])
def test_unknown_run_exits_2(command, run_id):
    assert exit_code_of(command, run_id) == (2, f"run {run_id} does not exist")


@pytest.mark.parametrize("run_id", ["424242", HUGE, JUST_PAST])
def test_approve_step_of_an_unknown_run_exits_2(run_id):
    assert exit_code_of("approve_step", run_id, "gate", "--by", "alice") == (
        2,
        f"run {run_id} does not exist",
    )


def gated():
    tl = task_list("gated", keys=["work", "gate"], edges=[("gate", "work")])
    Task.objects.filter(task_list=tl, key="gate").update(approval=True, kind=Task.Kind.GATE)
    return run_with_waves(tl, [["work"], ["gate"]])


def test_approve_step_of_an_unknown_step_exits_2():
    run = gated()
    code, message = exit_code_of("approve_step", run.pk, "nope", "--by", "alice")
    assert code == 2 and "has no step 'nope'" in message


def test_approve_step_of_a_step_that_is_no_gate_exits_2_and_records_nothing():
    run = gated()
    code, message = exit_code_of("approve_step", run.pk, "work", "--by", "alice")
    assert code == 2 and "not an approval step" in message
    assert not WaveTask.objects.filter(execution=run).exclude(approval_decision="").exists()


def test_approve_step_in_advance_exits_0_and_a_second_decision_exits_2():
    run = gated()
    out = StringIO()
    call_command("approve_step", str(run.pk), "gate", "--by", "alice", stdout=out)
    assert out.getvalue().strip() == f"step gate of run {run.pk} approved by alice"
    code, message = exit_code_of("approve_step", run.pk, "gate", "--reject", "--by", "bob")
    assert code == 2 and "already approved by alice" in message


def test_cancel_of_a_run_that_already_ended_exits_2():
    run = gated()
    ExecutionRun.objects.filter(pk=run.pk).update(status=RunStatus.SUCCEEDED, completed_at=timezone.now())
    WaveTask.objects.filter(execution=run).update(status=TaskStatus.SUCCEEDED)
    assert exit_code_of("cancel_run", run.pk) == (2, f"run {run.pk} already ended (succeeded)")
    assert ExecutionRun.objects.get(pk=run.pk).cancel_requested_at is None


# --- in a child process: the exit status a shell sees ----------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["run_status", HUGE], f"run {HUGE} does not exist"),
        (["run_status", "x"], "must be a run id"),
        (["run_status", "--interval", "nan"], "--interval must be a positive number"),
        (["cancel_run", HUGE], f"run {HUGE} does not exist"),
        (["cancel_run", "-5"], "must be a run id"),
        (["cancel_run", "1", "--timeout", "inf"], "must be a number of seconds"),
        (["approve_step", HUGE, "gate"], f"run {HUGE} does not exist"),
        (["approve_step", "1"], "the following arguments are required: step"),
        (["plan_tasklist", HUGE], f"no task list with id or name '{HUGE}'"),
        (["plan_tasklist", "ghost", "--json"], "no task list with id or name 'ghost'"),
        (["plan_tasklist", "ghost", "--format", "svg"], "invalid choice: 'svg'"),
    ],
)
def test_commands_exit_2_on_bad_arguments_and_unknown_ids(manage, args, message):
    proc = manage(*args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
