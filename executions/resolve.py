"""Resolving `${...}` references and CEL conditions against what a run has produced.

The context is `{"steps": {key: {"outputs": ..., "status": ...}}, "item": ..., "iteration": n}`.
In a command line every substituted value is shell-quoted, so an output such as
`$(touch x)` reaches the shell as a literal word, never as code. Conditions are CEL,
evaluated by the `cel` library (never Python eval).
"""

from __future__ import annotations

import json
import shlex
from typing import Any

import cel

from waves.refs import find_refs


class ResolveError(Exception):
    pass


def lookup(ref, ctx: dict) -> Any:
    path = list(ref.path)
    if ref.kind == "item":
        if path[:1] == ["item"]:
            path = path[1:]
        if "item" not in ctx:
            raise ResolveError(f"{ref.text}: there is no item here (only for_each steps have one)")
        value, where = ctx["item"], "item"
    elif ref.kind == "iteration":
        return ctx.get("iteration", 1)
    else:
        if path[:1] == ["outputs"]:
            path = path[1:]
        step = ctx["steps"].get(ref.step)
        if step is None or step.get("outputs") is None:
            raise ResolveError(f"{ref.text}: step {ref.step!r} has no outputs")
        value, where = step["outputs"], f"steps.{ref.step}.outputs"
    for part in path:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise ResolveError(f"{ref.text}: {where} has no {part!r}")
        where = f"{where}.{part}"
    return value


def as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def resolve_value(value: Any, ctx: dict) -> Any:
    """Inputs and env: a string that is one whole reference becomes the referenced value;
    references inside a longer string are replaced by their text."""
    if isinstance(value, dict):
        return {k: resolve_value(v, ctx) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_value(v, ctx) for v in value]
    if not isinstance(value, str):
        return value
    refs = find_refs(value)
    if len(refs) == 1 and refs[0].text == value.strip():
        return lookup(refs[0], ctx)
    for ref in refs:
        value = value.replace(ref.text, as_text(lookup(ref, ctx)))
    return value


def render_command(command: str, ctx: dict) -> str:
    """Substitute references into a shell command, each value shell-quoted."""
    for ref in find_refs(command):
        command = command.replace(ref.text, shlex.quote(as_text(lookup(ref, ctx))))
    return command


def evaluate(expression: str, ctx: dict) -> bool:
    try:
        result = cel.evaluate(expression, ctx)
    except Exception as exc:  # the library raises several types; all mean "cannot evaluate"
        raise ResolveError(f"condition {expression!r} failed: {exc}")
    if not isinstance(result, bool):
        raise ResolveError(f"condition {expression!r} gave {result!r}, not true or false")
    return result
