"""Wave statistics kept by the signal handlers, and statistics_recompute agreeing with them."""

from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.forms.models import model_to_dict
from django.test.utils import CaptureQueriesContext

from executions import services as executions
from executions.capture import StatusChange
from executions.models import ParallelExecutionWave, TaskStatus, WaveStatus, WaveTask
from executions.signals import output_captured, task_status_changed
from observability import services
from observability.models import WaveStatistics
from tests.factories import run_with_waves, task_list
from tests.observability.builders import AT, agent_for, captured, event

pytestmark = pytest.mark.django_db

S = TaskStatus
COMPARED = [*services.STATISTICS_FIELDS, "execution"]


def tasks(run) -> dict[str, WaveTask]:
    return {wt.key: wt for wt in WaveTask.objects.filter(execution=run).select_related("wave")}


def stats(wave) -> WaveStatistics:
    return WaveStatistics.objects.get(wave=wave)


def counters(wave) -> dict:
    return model_to_dict(stats(wave), fields=COMPARED)


def move(wt: WaveTask, *statuses: str) -> None:
    for status in statuses:
        assert executions.transition(wt, status, expected=wt.status) == [wt]


def reset(wave_tasks: list[WaveTask]) -> None:
    """A final status taken back to pending: no transition allows it any more (a resume
    makes a new run), but the handler must still keep its counters right if a row is
    rewritten, so the change is sent as the signal reports it."""
    changes = [StatusChange(wt.pk, wt.task_id, wt.execution_id, wt.wave_id, wt.status, S.PENDING) for wt in wave_tasks]
    WaveTask.objects.filter(pk__in=[wt.pk for wt in wave_tasks]).update(status=S.PENDING)
    for wt in wave_tasks:
        wt.status = S.PENDING
    task_status_changed.send(sender=WaveTask, changes=changes)


def assert_recompute_agrees(run) -> None:
    """What the handlers kept is exactly what the raw rows give."""
    waves = list(ParallelExecutionWave.objects.filter(execution=run))
    kept = {w.pk: counters(w) for w in waves}
    rows = services.statistics_recompute(execution_id=run.pk)
    assert [r.wave_id for r in rows] == sorted(kept)
    assert {r.wave_id: model_to_dict(r, fields=COMPARED) for r in rows} == kept
    assert {w.pk: counters(w) for w in waves} == kept


@pytest.fixture
def run():
    tl = task_list(keys=("a", "b", "c", "d", "e", "f"), edges=[("d", "a"), ("e", "a")])
    return run_with_waves(tl, [["a", "b", "c", "f"], ["d", "e"]])


def test_creating_wave_tasks_creates_the_rows_and_counts_tasks(run):
    t = tasks(run)
    first, second = t["a"].wave, t["d"].wave
    assert (stats(first).task_count, stats(second).task_count) == (4, 2)
    assert stats(first).execution_id == run.pk
    assert stats(first).pass_rate is None
    assert_recompute_agrees(run)


def test_wave_changed_creates_the_row_of_a_wave_first_seen_and_copies_timing():
    run = run_with_waves(task_list(keys=("a",)), [])
    wave = ParallelExecutionWave.objects.create(execution=run, wave_number=0)
    executions.wave_update(wave, status=WaveStatus.RUNNING, started_at=AT)
    row = stats(wave)
    assert (row.task_count, row.started_at, row.completed_at, row.duration_ms) == (0, AT, None, None)
    executions.wave_update(wave, status=WaveStatus.SUCCEEDED, completed_at=AT + timedelta(seconds=2.5))
    row = stats(wave)
    assert (row.started_at, row.completed_at, row.duration_ms) == (AT, AT + timedelta(seconds=2.5), 2500)
    assert WaveStatistics.objects.filter(wave=wave).count() == 1
    assert_recompute_agrees(run)


def test_terminal_statuses_move_their_counters_and_pass_rate(run):
    t = tasks(run)
    wave = t["a"].wave
    move(t["a"], S.QUEUED, S.RUNNING, S.SUCCEEDED)
    assert model_to_dict(stats(wave), fields=["completed_count", "failed_count", "pass_rate"]) == {
        "completed_count": 1,
        "failed_count": 0,
        "pass_rate": 1.0,
    }
    move(t["b"], S.RUNNING, S.FAILED)
    move(t["c"], S.SKIPPED)
    move(t["f"], S.RUNNING, S.LOST)
    row = stats(wave)
    assert (row.task_count, row.completed_count, row.failed_count, row.skipped_count) == (4, 1, 1, 1)
    assert row.pass_rate == 0.5
    move(t["d"], S.RUNNING, S.CANCELLED)
    assert model_to_dict(stats(t["d"].wave), fields=["completed_count", "failed_count", "skipped_count"]) == {
        "completed_count": 0,
        "failed_count": 0,
        "skipped_count": 0,
    }
    assert stats(t["d"].wave).pass_rate is None
    assert_recompute_agrees(run)


def test_a_resume_reset_takes_the_task_back_out_of_its_counter(run):
    t = tasks(run)
    wave = t["a"].wave
    move(t["a"], S.RUNNING, S.SUCCEEDED)
    move(t["b"], S.RUNNING, S.FAILED)
    move(t["c"], S.SKIPPED)
    assert stats(wave).pass_rate == 0.5
    # Resume: the failed and skipped tasks go back to pending (one bulk transition), then run again.
    reset([t["b"], t["c"]])
    row = stats(wave)
    assert (row.completed_count, row.failed_count, row.skipped_count, row.pass_rate) == (1, 0, 0, 1.0)
    move(t["b"], S.RUNNING, S.SUCCEEDED)
    move(t["c"], S.RUNNING, S.FAILED)
    row = stats(wave)
    assert (row.task_count, row.completed_count, row.failed_count, row.skipped_count) == (4, 2, 1, 0)
    assert row.pass_rate == pytest.approx(2 / 3) and row.pass_rate == 2 / 3
    reset([t["a"], t["b"], t["c"]])
    row = stats(wave)
    assert (row.completed_count, row.failed_count, row.pass_rate) == (0, 0, None)
    assert_recompute_agrees(run)


def test_for_each_instances_count_like_other_wave_tasks(run):
    t = tasks(run)
    parent = t["a"]
    move(parent, S.RUNNING)
    executions.wave_tasks_create(
        [
            WaveTask(
                wave=parent.wave,
                task=parent.task,
                execution=run,
                key=f"a[{i}]",
                parent=parent,
                item_index=i,
                item=i,
            )
            for i in range(3)
        ]
    )
    instances = [WaveTask.objects.get(execution=run, key=f"a[{i}]") for i in range(3)]
    move(instances[0], S.RUNNING, S.SUCCEEDED)
    move(instances[1], S.RUNNING, S.FAILED)
    move(instances[2], S.SKIPPED)
    move(parent, S.FAILED)
    row = stats(parent.wave)
    assert (row.task_count, row.completed_count, row.failed_count, row.skipped_count) == (7, 1, 2, 1)
    assert_recompute_agrees(run)


def test_captured_records_bump_the_record_counters(run):
    t = tasks(run)
    agent = agent_for(t["a"])
    output_captured.send(
        sender=None,
        execution_id=run.pk,
        records=[
            captured(t["a"], "stdout", "one", agent=agent),
            captured(t["a"], "stderr", "two", agent=agent),
            captured(t["a"], "system", "three", agent=agent),
            event(t["a"], {"type": "message", "content": "four"}),
            event(t["a"], "not json"),
            event(t["a"], {"type": "tool_use", "tool_name": "A", "is_error": True}),
            event(t["a"], {"type": "tool_use", "tool_name": "B", "is_blocked": True}),
            event(t["b"], {"type": "tool_use", "tool_name": "C", "is_error": True, "is_blocked": True}),
            event(t["b"], {"type": "assertion", "name": "x", "passed": True}),
            event(t["b"], {"type": "assertion", "name": "y", "passed": False}),
            event(t["b"], {"type": "assertion", "name": "z", "passed": True}),
            event(t["d"], {"type": "skill", "skill_name": "s"}),
            event(t["d"], {"type": "skill", "skill_name": "s2", "duration_ms": 3}),
            captured(t["d"], "stdout", "five"),
        ],
    )
    first = model_to_dict(stats(t["a"].wave), fields=services.RECORD_COUNTERS)
    assert first == {
        "transcript_entry_count": 5,
        "tool_use_count": 3,
        "tool_error_count": 2,
        "tool_blocked_count": 2,
        "assertion_count": 3,
        "assertion_pass_count": 2,
        "assertion_fail_count": 1,
        "skill_trace_count": 0,
    }
    second = stats(t["d"].wave)
    assert (second.transcript_entry_count, second.skill_trace_count, second.tool_use_count) == (1, 2, 0)
    assert_recompute_agrees(run)


def test_a_whole_run_with_a_resume_agrees_with_recompute(run):
    """The scenario of the brief: tasks move, output arrives, waves start and end, a resume."""
    t = tasks(run)
    first, second = t["a"].wave, t["d"].wave
    executions.wave_update(first, status=WaveStatus.RUNNING, started_at=AT)
    for key in "abc":
        move(t[key], S.QUEUED)
    move(t["a"], S.RUNNING, S.SUCCEEDED)
    move(t["b"], S.RUNNING, S.FAILED)
    move(t["c"], S.RUNNING, S.SUCCEEDED)
    move(t["f"], S.SKIPPED)
    output_captured.send(
        sender=None,
        execution_id=run.pk,
        records=[
            captured(t["a"], "stdout", "a out"),
            event(t["a"], {"type": "assertion", "name": "ok", "passed": True}),
            event(t["b"], {"type": "tool_use", "tool_name": "Bash", "is_error": True}),
            event(t["b"], '{"type": "assertion"}'),
        ],
    )
    executions.wave_update(first, status=WaveStatus.FAILED, completed_at=AT + timedelta(milliseconds=1234))
    move(t["d"], S.RUNNING, S.SUCCEEDED)
    move(t["e"], S.SKIPPED)
    executions.wave_update(second, status=WaveStatus.SUCCEEDED, started_at=AT, completed_at=AT)
    assert_recompute_agrees(run)

    # Resume: failed and skipped tasks are reset and run again; succeeded ones stay.
    reset([t["b"], t["f"], t["e"]])
    executions.wave_update(first, status=WaveStatus.RUNNING, completed_at=None)
    assert_recompute_agrees(run)
    move(t["b"], S.RUNNING, S.SUCCEEDED)
    move(t["f"], S.RUNNING, S.SUCCEEDED)
    move(t["e"], S.RUNNING, S.FAILED)
    output_captured.send(
        sender=None,
        execution_id=run.pk,
        records=[event(t["e"], {"type": "skill", "skill_name": "retry"}), captured(t["e"], "stderr", "boom")],
    )
    executions.wave_update(first, status=WaveStatus.SUCCEEDED, completed_at=AT + timedelta(seconds=9))

    row = counters(first)
    assert row == {
        "execution": run.pk,
        "task_count": 4,
        "completed_count": 4,
        "failed_count": 0,
        "skipped_count": 0,
        "pass_rate": 1.0,
        "transcript_entry_count": 2,
        "tool_use_count": 1,
        "tool_error_count": 1,
        "tool_blocked_count": 0,
        "assertion_count": 1,
        "assertion_pass_count": 1,
        "assertion_fail_count": 0,
        "skill_trace_count": 0,
        "started_at": AT,
        "completed_at": AT + timedelta(seconds=9),
        "duration_ms": 9000,
    }
    assert counters(second)["pass_rate"] == 0.5
    assert_recompute_agrees(run)


def test_a_counter_never_goes_below_zero_when_rows_were_rebuilt_mid_run(run):
    t = tasks(run)
    move(t["b"], S.RUNNING, S.FAILED)
    WaveStatistics.objects.all().delete()
    reset([t["b"]])
    row = stats(t["b"].wave)
    assert (row.failed_count, row.pass_rate) == (0, None)


def statistics_queries(ctx: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in ctx.captured_queries if "wave_statistics" in q["sql"]]


def test_status_handler_issues_one_update_per_wave_per_batch(run):
    t = tasks(run)
    everything = list(t.values())
    with CaptureQueriesContext(connection) as one:
        executions.transition(t["a"], S.RUNNING, expected=S.PENDING)
    with CaptureQueriesContext(connection) as six:
        executions.transition(everything, S.SKIPPED, expected=S.PENDING)
    assert len(statistics_queries(one)) == 0  # running counts nowhere: no query at all
    updates = statistics_queries(six)
    assert len(updates) == 2 and all(sql.lstrip().upper().startswith("UPDATE") for sql in updates)


def test_records_handler_does_not_grow_queries_per_event(run):
    t = tasks(run)

    def batch(n):
        return [
            record
            for i in range(n)
            for record in (
                captured(t["a"], "stdout", f"line {i}"),
                event(t["b"], {"type": "tool_use", "tool_name": "T", "is_error": i % 2 == 0}),
                event(t["c"], {"type": "assertion", "name": f"n{i}", "passed": i % 3 == 0}),
                event(t["d"], {"type": "skill", "skill_name": "s"}),
            )
        ]

    counts = {}
    for n in (1, 50):
        with CaptureQueriesContext(connection) as ctx:
            output_captured.send(sender=None, execution_id=run.pk, records=batch(n))
        counts[n] = (len(ctx.captured_queries), len(statistics_queries(ctx)))
    assert counts[1] == counts[50] == (6, 2)  # 4 INSERTs + 1 UPDATE per wave
    assert stats(t["a"].wave).tool_use_count == 51
    assert_recompute_agrees(run)


def test_recompute_repairs_every_row_and_recreates_missing_ones(run):
    t = tasks(run)
    move(t["a"], S.RUNNING, S.SUCCEEDED)
    output_captured.send(sender=None, execution_id=run.pk, records=[captured(t["a"], "stdout", "x")])
    expected = counters(t["a"].wave)
    WaveStatistics.objects.filter(wave=t["a"].wave).update(completed_count=99, transcript_entry_count=0)
    WaveStatistics.objects.filter(wave=t["d"].wave).delete()
    other = run_with_waves(task_list("other", keys=("x",)), [["x"]])
    WaveStatistics.objects.filter(execution=other).update(task_count=42)

    call_command("recompute_statistics", "--execution", run.pk, stdout=open("/dev/null", "w"))
    assert counters(t["a"].wave) == expected
    assert stats(t["d"].wave).task_count == 2
    assert WaveStatistics.objects.get(execution=other).task_count == 42

    rows = services.statistics_recompute()
    assert {r.execution_id for r in rows} == {run.pk, other.pk}
    assert WaveStatistics.objects.get(execution=other).task_count == 1


def test_recompute_command_reports_and_rejects_unknown_runs(run, capsys):
    call_command("recompute_statistics")
    assert "recomputed statistics of 2 wave(s) in 1 run(s)" in capsys.readouterr().out
    with pytest.raises(CommandError, match="run 999999 does not exist"):
        call_command("recompute_statistics", "--execution", "999999")
