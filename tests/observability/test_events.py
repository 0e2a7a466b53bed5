"""observability.events.parse_event_line: every valid type and every kind of bad line."""

import json
import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from observability.events import (
    EVENT_TYPES,
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


# --- whatever a task writes: an event or an invalid event that can be stored, never an exception ---

LIMIT = 65536  # settings.TIDEWATCH["EVENT_LINE_MAX_BYTES"]


def walk(value):
    """Every value inside `value`, keys included."""
    stack = [value]
    while stack:
        v = stack.pop()
        yield v
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)


def assert_storable(event):
    """What PostgreSQL takes in a text or jsonb column: no NUL, no lone surrogate, finite
    numbers, bounded nesting; an invalid event's raw text is bounded too."""
    if isinstance(event, InvalidEvent):
        assert len(event.raw.encode("utf-8")) <= LIMIT + 100 and len(event.reason) <= 1000
        values = [event.reason, event.raw]
    else:
        values = [getattr(event, f) for f in event.__slots__]
    for value in walk(values):
        if isinstance(value, str):
            value.encode("utf-8")  # no lone surrogate
            assert "\x00" not in value
        elif isinstance(value, float):
            assert math.isfinite(value)
    json.dumps(values, default=str, allow_nan=False)  # bounded nesting, finite numbers


@pytest.mark.parametrize(
    "number", ["1e309", "-1e309", "1E400", "NaN", "Infinity", "-Infinity", "123456789e999"]
)
@pytest.mark.parametrize("where", ["payload", "duration_ms", "nested"])
def test_numbers_that_are_not_finite_make_the_line_invalid(number, where):
    raw = {
        "payload": f'{{"type": "skill", "skill_name": "s", "payload": {number}}}',
        "duration_ms": f'{{"type": "skill", "skill_name": "s", "duration_ms": {number}}}',
        "nested": f'{{"type": "tool_use", "tool_name": "t", "input": {{"a": [1, {{"b": {number}}}]}}}}',
    }[where]
    event = parse_event_line(raw)
    assert isinstance(event, InvalidEvent) and "not valid JSON" in event.reason
    assert number.lstrip("-") in event.reason
    assert event.raw == raw


def test_large_but_finite_numbers_are_kept():
    event = parse_event_line('{"type": "skill", "skill_name": "s", "payload": [1e308, -1e-400, 123456789012345678901234567890]}')
    assert event.payload == [1e308, -0.0, 123456789012345678901234567890]


def test_nesting_is_bounded_like_task_outputs():
    def nested(depth):
        return '{"type": "skill", "skill_name": "s", "payload": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}"

    assert isinstance(parse_event_line(nested(64)), SkillEvent)
    event = parse_event_line(nested(65))
    assert isinstance(event, InvalidEvent) and "nested deeper than 64" in event.reason
    assert isinstance(parse_event_line('{"type": "skill", "skill_name": "s", "payload": ' + '{"a": ' * 3000 + "1" + "}" * 3001), InvalidEvent)


def test_a_line_longer_than_the_cap_is_invalid_and_its_raw_text_is_cut():
    raw = line(type="message", content="é" * LIMIT)
    event = parse_event_line(raw + "\n")
    assert isinstance(event, InvalidEvent)
    assert f"more than the limit of {LIMIT}" in event.reason and str(len(raw.encode())) in event.reason
    assert event.raw.startswith(raw[: LIMIT // 2 - 100])
    assert event.raw.endswith(f"[... {len(raw.encode()) - LIMIT} more bytes cut]")
    assert_storable(event)
    just = line(type="message", content="x" * (LIMIT - 40))
    assert len(just.encode()) <= LIMIT and parse_event_line(just) == MessageEvent("x" * (LIMIT - 40))
    assert isinstance(parse_event_line(just, max_bytes=1000), InvalidEvent)


def test_the_cap_comes_from_settings(settings):
    settings.TIDEWATCH = {**settings.TIDEWATCH, "EVENT_LINE_MAX_BYTES": 300}
    event = parse_event_line(line(type="message", content="x" * 400))
    assert isinstance(event, InvalidEvent) and "more than the limit of 300" in event.reason
    assert isinstance(parse_event_line(line(type="message", content="x" * 200)), MessageEvent)


def test_nul_and_lone_surrogates_become_replacement_characters_everywhere():
    event = parse_event_line('{"type": "skill", "skill_name": "s\\ud800", "payload": {"\\udfff": "a\\u0000"}}')
    assert event == SkillEvent("s\ufffd", {"\ufffd": "a\ufffd"})
    # A raw NUL is not valid JSON; the invalid event keeps the line without it.
    invalid = parse_event_line('{"type": "message", "content": "a\x00b"}')
    assert isinstance(invalid, InvalidEvent) and "\x00" not in invalid.raw and "a\ufffdb" in invalid.raw
    unknown = parse_event_line(line(type="x\x00" + "y" * 5000))
    assert isinstance(unknown, InvalidEvent) and len(unknown.reason) < 300
    assert_storable(unknown)


def test_times_out_of_range_are_invalid_not_overflow_errors():
    for value in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"):
        event = parse_event_line(line(type="tool_use", tool_name="t", start_time=value))
        assert isinstance(event, InvalidEvent) and "'start_time' is out of range" in event.reason


def test_an_end_before_the_time_received_never_gives_a_negative_duration():
    event = parse_event_line(line(type="tool_use", tool_name="t", end_time="2026-01-16T09:00:00Z"))
    start, end, duration = event.timing(AT)
    assert start == end == AT - timedelta(hours=1) and duration == 0


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(st.characters(codec=None, exclude_categories=())),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=30,
)
EVENTS = st.fixed_dictionaries(
    {"type": st.sampled_from([*EVENT_TYPES, "other"])},
    optional={
        key: JSON_VALUES | st.sampled_from(["x", "2026-01-16T10:00:00Z", "0001-01-01T00:00:00+05:00", True, 5])
        for key in ("tool_name", "name", "skill_name", "content", "text", "passed", "is_error", "input",
                    "output", "payload", "message", "duration_ms", "start_time", "end_time")
    },
)


@hypothesis_settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        st.text(st.characters(codec=None, exclude_categories=())),
        EVENTS.map(lambda e: json.dumps(e, ensure_ascii=False)),
        EVENTS.map(json.dumps),
        JSON_VALUES.map(json.dumps),
    )
)
def test_any_line_gives_an_event_or_an_invalid_event_that_can_be_stored(text):
    event = parse_event_line(text)
    assert_storable(event)
    if isinstance(event, ToolUseEvent):
        assert event.timing(AT)[2] >= 0
