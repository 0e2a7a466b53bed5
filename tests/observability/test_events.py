"""observability.events.parse_event_line: every valid type and every kind of bad line."""

import json
from datetime import UTC, datetime, timedelta

import pytest

from observability.events import (
    AssertionEvent,
    InvalidEvent,
    MessageEvent,
    SkillEvent,
    ToolUseEvent,
    parse_event_line,
)

AT = datetime(2026, 1, 16, 10, 0, 0, tzinfo=UTC)


def line(**data) -> str:
    return json.dumps(data)


def test_tool_use_with_every_field():
    event = parse_event_line(
        line(
            type="tool_use",
            tool_name="Bash",
            input={"command": "ls"},
            output=["a", "b"],
            is_error=True,
            is_blocked=False,
            start_time="2026-01-16T10:00:00Z",
            end_time="2026-01-16T10:00:01.250+00:00",
        )
    )
    assert event == ToolUseEvent(
        tool_name="Bash",
        input={"command": "ls"},
        output=["a", "b"],
        is_error=True,
        is_blocked=False,
        start_time=AT,
        end_time=AT + timedelta(milliseconds=1250),
    )
    assert event.timing(AT + timedelta(hours=1)) == (AT, AT + timedelta(milliseconds=1250), 1250)


def test_tool_use_minimal_defaults_to_the_time_received():
    event = parse_event_line(line(type="tool_use", tool_name="Read"))
    assert event == ToolUseEvent(tool_name="Read")
    assert event.timing(AT) == (AT, AT, 0)


def test_tool_use_start_only_ends_when_received_and_keeps_a_given_duration():
    event = parse_event_line(line(type="tool_use", tool_name="Read", start_time="2026-01-16T09:59:58Z"))
    assert event.timing(AT) == (AT - timedelta(seconds=2), AT, 2000)
    given = parse_event_line(line(type="tool_use", tool_name="Read", duration_ms=7))
    assert given.timing(AT) == (AT, AT, 7)


def test_tool_use_naive_time_is_utc_and_offsets_are_converted():
    event = parse_event_line(
        line(
            type="tool_use",
            tool_name="x",
            start_time="2026-01-16T10:00:00",
            end_time="2026-01-16T12:00:00+02:00",
        )
    )
    assert event.start_time == AT and event.end_time == AT


def test_assertion():
    assert parse_event_line(line(type="assertion", name="rows > 0", passed=True)) == AssertionEvent(
        "rows > 0", True, ""
    )
    assert parse_event_line(
        line(type="assertion", name="schema", passed=False, message="column missing")
    ) == AssertionEvent("schema", False, "column missing")


def test_skill():
    assert parse_event_line(
        line(type="skill", skill_name="summarise", payload={"tokens": 12}, duration_ms=40)
    ) == SkillEvent("summarise", {"tokens": 12}, 40)
    assert parse_event_line(line(type="skill", skill_name="s")) == SkillEvent("s")


def test_message_from_content_or_text():
    assert parse_event_line(line(type="message", content="hello")) == MessageEvent("hello")
    assert parse_event_line(line(type="message", text="hi")) == MessageEvent("hi")


def test_trailing_newline_is_not_part_of_the_line():
    assert parse_event_line(line(type="message", content="x") + "\n") == MessageEvent("x")


@pytest.mark.parametrize(
    "raw, reason",
    [
        ("not json at all", "not valid JSON"),
        ("", "not valid JSON"),
        ('{"type": "message", "content": "x"', "not valid JSON"),
        ('{"type": "skill", "skill_name": "s", "payload": NaN}', "NaN is not a JSON value"),
        ("[1, 2]", "not a JSON object (got array)"),
        ('"tool_use"', "not a JSON object (got string)"),
        ("null", "not a JSON object (got null)"),
        ('{"tool_name": "Bash"}', "field 'type' is required"),
        ('{"type": 3}', "field 'type' must be a string"),
        ('{"type": "telemetry"}', "unknown type 'telemetry'"),
        ('{"type": "tool_use"}', "field 'tool_name' is required"),
        ('{"type": "tool_use", "tool_name": 5}', "field 'tool_name' must be a string"),
        ('{"type": "tool_use", "tool_name": "  "}', "field 'tool_name' must not be empty"),
        ('{"type": "tool_use", "tool_name": "t", "is_error": "yes"}', "field 'is_error' must be a boolean"),
        ('{"type": "tool_use", "tool_name": "t", "is_blocked": 1}', "field 'is_blocked' must be a boolean"),
        ('{"type": "tool_use", "tool_name": "t", "start_time": "yesterday"}', "field 'start_time' must be"),
        ('{"type": "tool_use", "tool_name": "t", "end_time": 17}', "field 'end_time' must be"),
        (
            '{"type": "tool_use", "tool_name": "t", "start_time": "2026-01-16T10:00:01Z",'
            ' "end_time": "2026-01-16T10:00:00Z"}',
            "field 'end_time' is before 'start_time'",
        ),
        ('{"type": "tool_use", "tool_name": "t", "duration_ms": -1}', "field 'duration_ms' must be between"),
        ('{"type": "assertion", "passed": true}', "field 'name' is required"),
        ('{"type": "assertion", "name": "n"}', "field 'passed' is required"),
        ('{"type": "assertion", "name": "n", "passed": "true"}', "field 'passed' must be a boolean"),
        (
            '{"type": "assertion", "name": "n", "passed": true, "message": 3}',
            "field 'message' must be a string",
        ),
        ('{"type": "skill"}', "field 'skill_name' is required"),
        (
            '{"type": "skill", "skill_name": "s", "duration_ms": 1.5}',
            "field 'duration_ms' must be an integer",
        ),
        (
            '{"type": "skill", "skill_name": "s", "duration_ms": true}',
            "field 'duration_ms' must be an integer",
        ),
        (
            '{"type": "skill", "skill_name": "s", "duration_ms": "5"}',
            "field 'duration_ms' must be an integer",
        ),
        ('{"type": "message"}', "field 'content' is required"),
        ('{"type": "message", "content": {"a": 1}}', "field 'content' must be a string"),
    ],
)
def test_invalid_lines_name_the_reason_and_keep_the_raw_line(raw, reason):
    event = parse_event_line(raw)
    assert isinstance(event, InvalidEvent)
    assert reason in event.reason
    assert event.raw == raw
    assert event.content == f"invalid event: {event.reason}: {raw}"


def test_invalid_content_matches_the_documented_form():
    raw = '{"type": "assertion", "name": "n", "passed": "no"}'
    assert parse_event_line(raw).content == f"invalid event: field 'passed' must be a boolean: {raw}"


def test_names_longer_than_their_column_are_invalid():
    event = parse_event_line(line(type="tool_use", tool_name="x" * 201))
    assert isinstance(event, InvalidEvent) and "longer than 200" in event.reason
    assert isinstance(parse_event_line(line(type="assertion", name="n" * 500, passed=True)), AssertionEvent)


def test_nul_characters_are_replaced_so_postgresql_can_store_them():
    event = parse_event_line(line(type="tool_use", tool_name="t\x00", input={"k\x00": ["v\x00"]}))
    assert event.tool_name == "t\ufffd" and event.input == {"k\ufffd": ["v\ufffd"]}


def test_deeply_nested_json_is_invalid_not_a_crash():
    assert isinstance(parse_event_line("[" * 100_000 + "]" * 100_000), InvalidEvent)
