"""`${...}` references in workflow steps, shared by the loaders and the executor.

Allowed forms: `${steps.X.outputs}`, `${steps.X.outputs.a.b}`, `${item}`, `${item.field}`,
`${iteration}`. Anything else inside `${...}` is an error that names it, so a typo never
reaches a shell as literal text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

REF_RE = re.compile(r"\$\{([^{}]*)\}")
_NAME = r"[A-Za-z0-9_-]+"
_STEPS_RE = re.compile(rf"steps\.({_NAME})\.outputs((?:\.{_NAME})*)")
_ITEM_RE = re.compile(rf"item((?:\.{_NAME})*)")

# `steps.X` or `steps["X"]` / `steps['X']` in a CEL expression, not preceded by a name or dot.
_CEL_DOT_RE = re.compile(r"(?<![\w.])steps\s*\.\s*([A-Za-z_][A-Za-z0-9_]*)")
_CEL_INDEX_RE = re.compile(r"""(?<![\w.])steps\s*\[\s*(?:"([^"]*)"|'([^']*)')\s*\]""")


class RefError(ValueError):
    """A `${...}` that is not one of the allowed forms."""


@dataclass(frozen=True, slots=True)
class Ref:
    step: str | None
    path: tuple[str, ...]
    kind: Literal["steps", "item", "iteration"]
    text: str  # the whole `${...}` as written, for substitution and messages


def parse_ref(text: str) -> Ref:
    """Parse one `${...}` occurrence (the full text including `${` and `}`)."""
    inner = text[2:-1].strip()
    if m := _STEPS_RE.fullmatch(inner):
        return Ref(m[1], _path(m[2]), "steps", text)
    if m := _ITEM_RE.fullmatch(inner):
        return Ref(None, _path(m[1]), "item", text)
    if inner == "iteration":
        return Ref(None, (), "iteration", text)
    raise RefError(
        f"bad reference {text!r}: expected ${{steps.<id>.outputs[.key...]}}, ${{item[.key...]}} "
        "or ${iteration}"
    )


def _path(dotted: str) -> tuple[str, ...]:
    return tuple(dotted.split(".")[1:]) if dotted else ()


def find_refs(value: Any) -> list[Ref]:
    """Every reference in the strings of `value` (nested dicts and lists), in order."""
    out: list[Ref] = []
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            out.extend(parse_ref(m[0]) for m in REF_RE.finditer(v))
        elif isinstance(v, dict):
            stack.extend(reversed(list(v.values())))
        elif isinstance(v, list | tuple):
            stack.extend(reversed(v))
    return out


def condition_step_refs(cel_text: str) -> set[str]:
    """Step ids a CEL expression names as `steps.X` or `steps["X"]`."""
    names = set(_CEL_DOT_RE.findall(cel_text))
    names.update(a or b for a, b in _CEL_INDEX_RE.findall(cel_text))
    return names
