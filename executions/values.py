"""Values a task hands back (outputs, event payloads): parsed strictly, checked before they
are stored or passed on.

Whatever a task writes, what passes here can be stored in a JSON column on SQLite and on
PostgreSQL (no NUL character, no NaN or infinity, bounded nesting) and evaluated by CEL.
A value that cannot is refused with a message that names where it is, so the task that
wrote it fails with that reason instead of the executor failing on the write.
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_DEPTH = 64  # nesting of lists and objects in an output or event payload


class ValueProblem(ValueError):
    """A value that cannot be stored or passed on; the message says where and why."""


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueProblem(f"the number {text[:40]} is out of range")
    return value


def _constant(name: str):
    raise ValueProblem(f"{name} is not a JSON value")


def json_strict(text: str) -> Any:
    """json.loads that refuses NaN, Infinity and numbers that overflow to them (1e309),
    and nesting deeper than MAX_DEPTH. Raises ValueProblem or ValueError."""
    try:
        value = json.loads(text, parse_float=_finite, parse_constant=_constant)
    except RecursionError:
        raise ValueProblem(f"nested deeper than {MAX_DEPTH} levels") from None
    problem = storable_problem(value)
    if problem:
        raise ValueProblem(problem)
    return value


def storable_problem(value: Any, where: str = "") -> str | None:
    """Why `value` cannot be stored in a JSON column or passed on, or None when it can.

    Walks the value without recursion: a NUL character in a string or a key, a float that
    is not finite, or nesting deeper than MAX_DEPTH."""
    stack: list[tuple[Any, str, int]] = [(value, where, 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return f"{path or 'the value'} holds a NUL character"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return f"{path or 'the value'} is {item}, not a finite number"
        elif isinstance(item, dict | list):
            if depth >= MAX_DEPTH:
                return f"{path or 'the value'} is nested deeper than {MAX_DEPTH} levels"
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in pairs:
                if isinstance(key, str) and "\x00" in key:
                    return f"a key in {path or 'the value'} holds a NUL character"
                label = f"{path}.{key}" if isinstance(key, str) else f"{path}[{key}]"
                stack.append((child, label.lstrip("."), depth + 1))
    return None


def outputs_parse(text: str) -> tuple[dict | None, str | None]:
    """The contents of $TIDEWATCH_OUTPUT -> (outputs, None), or (None, why it is refused).
    Empty (or blank) means no outputs."""
    if not text.strip():
        return None, None
    try:
        value = json_strict(text)
    except ValueProblem as exc:
        return None, f"$TIDEWATCH_OUTPUT cannot be used: {exc}"
    except ValueError as exc:
        return None, f"$TIDEWATCH_OUTPUT is not valid JSON: {exc}"
    if not isinstance(value, dict):
        return None, f"$TIDEWATCH_OUTPUT must hold a JSON object, not {type(value).__name__}"
    return value, None
