"""observability.services.records_write: captured lines become records, linked to their wave."""

from datetime import timedelta

import pytest

from executions.models import WaveTask
from executions.signals import output_captured
from observability import services
from observability.models import AssertionResult, SkillTrace, ToolUse, TranscriptEntry, WaveStatistics
from tests.factories import run_with_waves, task_list
from tests.observability.builders import AT, agent_for, captured, event

pytestmark = pytest.mark.django_db


@pytest.fixture
def run():
    return run_with_waves(task_list(keys=("a", "b", "c"), edges=[("c", "a")]), [["a", "b"], ["c"]])


def wave_task(run, key) -> WaveTask:
    return WaveTask.objects.select_related("wave").get(execution=run, key=key)


def links(row) -> tuple:
    return (row.execution_id, row.wave_id, row.task_id, row.wave_task_id, row.agent_id)


def test_transcript_lines_keep_kind_sequence_wave_and_agent(run):
    a = wave_task(run, "a")
    agent = agent_for(a)
    services.records_write(
        run.pk,
        [
            captured(a, "stdout", "hello", agent=agent, sequence=1),
            captured(a, "stderr", "warning: x", agent=agent, sequence=2),
            captured(
                a, "system", "started (attempt 1)", agent=agent, sequence=3, at=AT + timedelta(seconds=1)
            ),
        ],
    )
    rows = list(TranscriptEntry.objects.filter(execution=run).order_by("sequence"))
    assert [(r.entry_type, r.sequence, r.content) for r in rows] == [
        ("stdout", 1, "hello"),
        ("stderr", 2, "warning: x"),
        ("system", 3, "started (attempt 1)"),
    ]
    for row in rows:
        assert links(row) == (run.pk, a.wave_id, a.task_id, a.pk, agent.pk)
        assert row.wave_number == 0 and row.instance_id == agent.instance_id
    assert rows[2].created_at == AT + timedelta(seconds=1)


def test_events_become_tool_uses_assertions_skill_traces_and_messages(run):
    c = wave_task(run, "c")
    agent = agent_for(c)
    written = services.records_write(
        run.pk,
        [
            event(
                c,
                {
                    "type": "tool_use",
                    "tool_name": "Bash",
                    "input": {"command": "ls"},
                    "output": "a\nb",
                    "is_error": True,
                    "start_time": "2026-01-16T09:59:59Z",
                },
                agent=agent,
            ),
            event(c, {"type": "tool_use", "tool_name": "Edit", "is_blocked": True}, agent=agent),
            event(c, {"type": "assertion", "name": "rows > 0", "passed": True}, agent=agent),
            event(
                c, {"type": "assertion", "name": "schema", "passed": False, "message": "no id"}, agent=agent
            ),
            event(
                c,
                {"type": "skill", "skill_name": "summarise", "payload": [1], "duration_ms": 30},
                agent=agent,
            ),
            event(c, {"type": "message", "content": "halfway"}, agent=agent, sequence=900),
        ],
    )
    assert written == {"transcript_entries": 1, "tool_uses": 2, "assertion_results": 2, "skill_traces": 1}

    bash, edit = ToolUse.objects.filter(execution=run).order_by("tool_name")
    assert (bash.tool_name, bash.input, bash.output, bash.is_error, bash.is_blocked) == (
        "Bash",
        {"command": "ls"},
        "a\nb",
        True,
        False,
    )
    assert (bash.start_time, bash.end_time, bash.duration_ms) == (AT - timedelta(seconds=1), AT, 1000)
    assert (edit.is_error, edit.is_blocked, edit.start_time, edit.duration_ms) == (False, True, AT, 0)

    passed, failed = AssertionResult.objects.filter(execution=run).order_by("-passed")
    assert (passed.name, passed.passed, passed.message, passed.created_at) == ("rows > 0", True, "", AT)
    assert (failed.name, failed.passed, failed.message) == ("schema", False, "no id")

    skill = SkillTrace.objects.get(execution=run)
    assert (skill.skill_name, skill.payload, skill.duration_ms, skill.started_at) == (
        "summarise",
        [1],
        30,
        AT,
    )

    message = TranscriptEntry.objects.get(execution=run)
    assert (message.entry_type, message.content, message.sequence) == ("message", "halfway", 900)

    for row in [bash, edit, passed, failed, skill, message]:
        assert links(row) == (run.pk, c.wave_id, c.task_id, c.pk, agent.pk)


def test_invalid_event_lines_are_kept_as_transcript_entries_with_the_reason(run):
    a = wave_task(run, "a")
    bad = '{"type": "assertion", "name": "n", "passed": "yes"}'
    services.records_write(
        run.pk, [event(a, bad, sequence=10), event(a, "garbage", sequence=11), event(a, "[]", sequence=12)]
    )
    rows = list(TranscriptEntry.objects.filter(execution=run).order_by("sequence"))
    assert [r.entry_type for r in rows] == ["invalid_event"] * 3
    assert rows[0].content == f"invalid event: field 'passed' must be a boolean: {bad}"
    assert rows[1].content.startswith("invalid event: not valid JSON") and rows[1].content.endswith(
        ": garbage"
    )
    assert rows[2].content == "invalid event: not a JSON object (got array): []"
    assert all(links(r) == (run.pk, a.wave_id, a.task_id, a.pk, None) for r in rows)
    assert not AssertionResult.objects.exists()


def test_nothing_is_dropped_and_nul_characters_are_stored(run):
    a = wave_task(run, "a")
    lines = [captured(a, "stdout", "bin\x00ary"), event(a, '{"type": "message", "content": "x\\u0000y"}')]
    services.records_write(run.pk, lines)
    assert sorted(TranscriptEntry.objects.values_list("content", flat=True)) == ["bin\ufffdary", "x\ufffdy"]


def test_output_captured_signal_reaches_records_write(run):
    b = wave_task(run, "b")
    output_captured.send(
        sender=None,
        execution_id=run.pk,
        records=[captured(b, "stdout", "via signal"), event(b, {"type": "tool_use", "tool_name": "T"})],
    )
    assert TranscriptEntry.objects.get(wave=b.wave).content == "via signal"
    assert ToolUse.objects.get(wave=b.wave).tool_name == "T"
    stats = WaveStatistics.objects.get(wave=b.wave)
    assert (stats.transcript_entry_count, stats.tool_use_count) == (1, 1)


def test_records_write_bulk_inserts_once_per_model(run, django_assert_num_queries):
    a, b = wave_task(run, "a"), wave_task(run, "b")
    WaveStatistics.objects.get_or_create(wave=a.wave, defaults={"execution": run})
    records = [captured(wt, "stdout", f"line {i}") for i in range(20) for wt in (a, b)] + [
        event(a, {"type": "tool_use", "tool_name": "T"}),
        event(a, {"type": "assertion", "name": "n", "passed": True}),
        event(b, {"type": "skill", "skill_name": "s"}),
    ]
    # 4 INSERTs (one per model) + 1 UPDATE of the one wave both tasks are in.
    with django_assert_num_queries(5):
        services.records_write(run.pk, records)
