"""Parsing and validation of event lines (one JSON object per line of $TIDEWATCH_EVENTS).

Pure functions, no ORM: `parse_event_line(text)` turns one raw line into a typed event or
an `InvalidEvent` that says why, so the executor's receiver and an ingest endpoint share
one set of rules. Nothing is dropped: the caller keeps an invalid line as a transcript
entry of type `invalid_event` (see `InvalidEvent.content`).

The limits below match the columns the events are written to: a value PostgreSQL would
refuse (a name longer than its column, NaN or a number that overflows to infinity in
JSON, nesting deeper than MAX_DEPTH, a duration beyond an integer column) makes the line
invalid here rather than failing the whole batch of the transaction it is written in. A
NUL character or a lone surrogate (which neither database stores) becomes U+FFFD. A line
longer than settings.TIDEWATCH["EVENT_LINE_MAX_BYTES"] is invalid, and the raw text an
invalid event keeps is cut to that size with a marker.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings

from executions.values import MAX_DEPTH  # nesting of lists and objects, as for task outputs

EVENT_TYPES = ("tool_use", "assertion", "skill", "message")

TOOL_NAME_MAX = 200  # ToolUse.tool_name
SKILL_NAME_MAX = 200  # SkillTrace.skill_name
ASSERTION_NAME_MAX = 500  # AssertionResult.name
DURATION_MS_MAX = 2**31 - 1  # PositiveIntegerField on PostgreSQL


@dataclass(frozen=True, slots=True)
class ToolUseEvent:
    tool_name: str
    input: Any = None
    output: Any = None
    is_error: bool = False
    is_blocked: bool = False
    # None: not given, the time the line was received is used (see `timing`).
    start_time: datetime | None = None
    end_time: datetime | None = None
    duration_ms: int | None = None

    def timing(self, received_at: datetime) -> tuple[datetime, datetime, int]:
        """(start, end, duration_ms), defaulting missing times to `received_at`.

        A missing end is never before the start, nor a missing start after the end (the
        reporter's clock may run ahead or behind): the duration is never negative.
        """
        start = self.start_time or min(received_at, self.end_time or received_at)
        end = self.end_time or max(received_at, start)
        duration = self.duration_ms if self.duration_ms is not None else milliseconds(end - start)
        return start, end, min(duration, DURATION_MS_MAX)


@dataclass(frozen=True, slots=True)
class AssertionEvent:
    name: str
    passed: bool
    message: str = ""


@dataclass(frozen=True, slots=True)
class SkillEvent:
    skill_name: str
    payload: Any = None
    duration_ms: int | None = None
    start_time: datetime | None = None  # None: the time the line was received


@dataclass(frozen=True, slots=True)
class MessageEvent:
    content: str


ParsedEvent = ToolUseEvent | AssertionEvent | SkillEvent | MessageEvent


@dataclass(frozen=True, slots=True)
class InvalidEvent:
    reason: str
    raw: str

    @property
    def content(self) -> str:
        """The transcript text: the reason, then the raw line as it came."""
        return f"invalid event: {self.reason}: {self.raw}"


class _Invalid(Exception):
    pass


def milliseconds(delta: timedelta) -> int:
    """Whole milliseconds of a duration (exact integer arithmetic, no float rounding)."""
    return delta // timedelta(milliseconds=1)


def parse_event_line(text: str, max_bytes: int | None = None) -> ParsedEvent | InvalidEvent:
    """Parse one event line; never raises for bad input. `max_bytes` defaults to
    settings.TIDEWATCH["EVENT_LINE_MAX_BYTES"]."""
    raw = text.rstrip("\r\n")
    cap = max_bytes or settings.TIDEWATCH["EVENT_LINE_MAX_BYTES"]
    encoded = raw.encode("utf-8", "surrogatepass")
    if len(encoded) > cap:
        cut = encoded[:cap].decode("utf-8", "ignore")
        marker = f" [... {len(encoded) - cap} more bytes cut]"
        return _invalid(f"the line is {len(encoded)} bytes, more than the limit of {cap}", cut + marker)
    try:
        data = _clean(json.loads(raw, parse_float=_finite, parse_constant=_reject_constant))
    except _Invalid as exc:
        return _invalid(str(exc), raw)
    except RecursionError:
        return _invalid(f"not valid JSON (nested deeper than {MAX_DEPTH} levels)", raw)
    except ValueError as exc:
        return _invalid(f"not valid JSON ({exc})", raw)
    if not isinstance(data, dict):
        return _invalid(f"not a JSON object (got {_json_type(data)})", raw)
    type_ = data.get("type")
    if type_ is None:
        return _invalid("field 'type' is required", raw)
    if not isinstance(type_, str):
        return _invalid("field 'type' must be a string", raw)
    parser = _PARSERS.get(type_)
    if parser is None:
        return _invalid(f"unknown type {type_[:100]!r} (expected one of {', '.join(EVENT_TYPES)})", raw)
    try:
        return parser(data)
    except _Invalid as exc:
        return _invalid(str(exc), raw)


def _invalid(reason: str, raw: str) -> InvalidEvent:
    return InvalidEvent(reason, _UNSTORABLE.sub("\ufffd", raw))


# --- one parser per type -------------------------------------------------------------------------


def _tool_use(data: dict) -> ToolUseEvent:
    start = _time(data, "start_time")
    end = _time(data, "end_time")
    if start and end and end < start:
        raise _Invalid("field 'end_time' is before 'start_time'")
    return ToolUseEvent(
        tool_name=_name(data, "tool_name", TOOL_NAME_MAX),
        input=data.get("input"),
        output=data.get("output"),
        is_error=_bool(data, "is_error", default=False),
        is_blocked=_bool(data, "is_blocked", default=False),
        start_time=start,
        end_time=end,
        duration_ms=_duration(data),
    )


def _assertion(data: dict) -> AssertionEvent:
    return AssertionEvent(
        name=_name(data, "name", ASSERTION_NAME_MAX),
        passed=_bool(data, "passed"),
        message=_str(data, "message", default=""),
    )


def _skill(data: dict) -> SkillEvent:
    return SkillEvent(
        skill_name=_name(data, "skill_name", SKILL_NAME_MAX),
        payload=data.get("payload"),
        duration_ms=_duration(data),
        start_time=_time(data, "start_time"),
    )


def _message(data: dict) -> MessageEvent:
    field = "content" if "content" in data or "text" not in data else "text"
    return MessageEvent(content=_str(data, field))


_PARSERS = {"tool_use": _tool_use, "assertion": _assertion, "skill": _skill, "message": _message}


# --- fields ------------------------------------------------------------------------------------

_MISSING = object()


def _str(data: dict, field: str, default: Any = _MISSING) -> str:
    value = data.get(field, _MISSING)
    if value is _MISSING or (value is None and default is not _MISSING):
        if default is _MISSING:
            raise _Invalid(f"field {field!r} is required")
        return default
    if not isinstance(value, str):
        raise _Invalid(f"field {field!r} must be a string")
    return value


def _name(data: dict, field: str, max_length: int) -> str:
    value = _str(data, field)
    if not value.strip():
        raise _Invalid(f"field {field!r} must not be empty")
    if len(value) > max_length:
        raise _Invalid(f"field {field!r} is longer than {max_length} characters")
    return value


def _bool(data: dict, field: str, default: Any = _MISSING) -> bool:
    value = data.get(field, _MISSING)
    if value is _MISSING or (value is None and default is not _MISSING):
        if default is _MISSING:
            raise _Invalid(f"field {field!r} is required")
        return default
    if not isinstance(value, bool):
        raise _Invalid(f"field {field!r} must be a boolean")
    return value


def _duration(data: dict) -> int | None:
    value = data.get("duration_ms")
    if value is None:
        return None
    # bool is an int in Python; true is not a duration.
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise _Invalid("field 'duration_ms' must be an integer")
    if not 0 <= value <= DURATION_MS_MAX:
        raise _Invalid(f"field 'duration_ms' must be between 0 and {DURATION_MS_MAX}")
    return int(value)


def _time(data: dict, field: str) -> datetime | None:
    value = data.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Invalid(f"field {field!r} must be an ISO 8601 string")
    try:
        parsed = datetime.fromisoformat(value)
        # A time without offset is taken as UTC, like every time Tidewatch stores.
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except ValueError:
        raise _Invalid(f"field {field!r} must be an ISO 8601 date-time") from None
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is before the first representable UTC time
        raise _Invalid(f"field {field!r} is out of range") from None


def _reject_constant(name: str):
    raise _Invalid(f"not valid JSON ({name} is not a JSON value)")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e309 overflows to infinity, which no JSON column stores
        raise _Invalid(f"not valid JSON (the number {text[:40]} is out of range)")
    return value


def _json_type(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


# Neither PostgreSQL nor a UTF-8 encoder takes a NUL character or a lone surrogate.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _clean(value: Any, depth: int = 0) -> Any:
    """`value` with U+FFFD for every NUL character and lone surrogate (in strings and keys);
    _Invalid when lists and objects are nested deeper than MAX_DEPTH."""
    if isinstance(value, str):
        return _UNSTORABLE.sub("\ufffd", value)
    if isinstance(value, list | dict):
        if depth >= MAX_DEPTH:
            raise _Invalid(f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, list):
            return [_clean(v, depth + 1) for v in value]
        return {_clean(k): _clean(v, depth + 1) for k, v in value.items()}
    return value
