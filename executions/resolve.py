"""Resolving `${...}` references and CEL conditions against what a run has produced.

The context is `{"steps": {key: {"outputs": ..., "status": ...}}, "item": ..., "iteration": n}`.
In a command line every substituted value is quoted for where it stands (a word of its own,
inside '...', inside "...", in a here-document: waves/shell.py), so an output such as
`$(touch x)` reaches the command as literal text, never as code. Substitution is one pass
over the references of the original text: a substituted value is never scanned again, so
an output holding `${steps.other.outputs.x}` stays that text.

Everything built here is bounded: a command line and an environment variable by what
Linux lets one exec argument or variable be (MAX_ARG_STRLEN), inputs by a generous size,
so repeating a big value cannot blow up memory. Conditions are CEL, evaluated by the `cel`
library (never Python eval), after a check of their length and nesting.
"""

from __future__ import annotations

import json
import os
import re
import select
import shlex
import signal
import time
from collections.abc import Callable
from typing import Any

import cel

from waves import shell
from waves.refs import REF_RE, RefError, parse_ref

# Linux refuses one exec argument or environment string longer than 128 KiB (MAX_ARG_STRLEN,
# "Argument list too long"); the rendered command is one argument of `/bin/sh -c`.
COMMAND_MAX_BYTES = 128 * 1024 - 4096
ENV_VALUE_MAX_BYTES = COMMAND_MAX_BYTES  # one `env:` value (the margin covers `NAME=`)
ENV_MAX_BYTES = 256 * 1024  # all `env:` values of a step together
INPUTS_MAX_BYTES = 16 * 2**20  # `inputs:` (a JSON file), as text, against memory blow-up
# CEL conditions (`when:`, `repeat.until`): refused before they reach the CEL library.
EXPRESSION_MAX_CHARS = 4096
EXPRESSION_MAX_DEPTH = 64  # nesting of (), [] and {}
EXPRESSION_MAX_SECONDS = 5.0  # a condition with a comprehension runs in a child, killed past this
MACRO_RE = re.compile(r"\.\s*(all|exists|exists_one|map|filter)\s*\(")

BIG_VALUES_HINT = "pass big values through `inputs:` (the $TIDEWATCH_INPUTS file) instead"


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


class _Budget:
    """Bytes (UTF-8) left for the text being built. `strict` text goes to exec (an argument
    or an environment variable), which takes no NUL character and only encodable text."""

    def __init__(self, limit: int, what: str, strict: bool):
        self.limit, self.left, self.what, self.strict = limit, limit, what, strict

    def take(self, text: str, ref: str | None = None) -> str:
        """Count `text` (the value of `ref`, or literal text when None) or raise ResolveError."""
        source = ref or f"the text of {self.what}"
        if self.strict and "\x00" in text:
            raise ResolveError(f"{source} holds a NUL character, which cannot be passed in {self.what}")
        if len(text) > self.left:  # a character is at least one byte: over, whatever the encoding
            self.overflow(ref, len(text))
        try:
            size = len(text.encode("utf-8", "strict" if self.strict else "surrogatepass"))
        except UnicodeEncodeError:
            raise ResolveError(f"{source} holds text that is not valid Unicode (a lone surrogate)") from None
        self.left -= size
        if self.left < 0:
            self.overflow(ref, size)
        return text

    def overflow(self, ref: str | None, size: int):
        message = f"{self.what} would be larger than {self.limit} bytes"
        if ref:
            message += f" with {ref} ({size} bytes) substituted"
        if self.strict:  # a command line or environment variable
            message += f" (Linux limits one to 128 KiB): {BIG_VALUES_HINT}"
        raise ResolveError(message)


def _ref(text: str):
    try:
        return parse_ref(text)
    except RefError as exc:
        raise ResolveError(str(exc)) from None


def _text_of(value: Any, source: str) -> str:
    try:
        return as_text(value)
    except RecursionError:
        raise ResolveError(f"{source} is nested too deeply to be used as text") from None


def _substitute(text: str, ctx: dict, budget: _Budget, quote: Callable[[str, int], str]) -> str:
    """One left-to-right pass over the references of `text`: the i-th is replaced by
    quote(its value, i), and what was substituted is never scanned again."""
    parts, pos = [], 0
    for i, m in enumerate(REF_RE.finditer(text)):
        parts.append(budget.take(text[pos : m.start()]))
        ref = _ref(m[0])
        parts.append(budget.take(quote(_text_of(lookup(ref, ctx), ref.text), i), ref.text))
        pos = m.end()
    parts.append(budget.take(text[pos:]))
    return "".join(parts)


def _whole_ref(value: str):
    """The one reference that `value` is (blanks around it aside), or None."""
    m = REF_RE.fullmatch(value.strip())
    return _ref(m[0]) if m else None


def _resolve(value: Any, ctx: dict, budget: _Budget) -> Any:
    if isinstance(value, dict):
        return {k: _resolve(v, ctx, budget) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, ctx, budget) for v in value]
    if not isinstance(value, str):
        return value
    ref = _whole_ref(value)
    if ref is None:
        return _substitute(value, ctx, budget, _as_is)
    resolved = lookup(ref, ctx)
    budget.take(_text_of(resolved, ref.text), ref.text)  # counted as the text it is written as
    return resolved


def resolve_value(value: Any, ctx: dict) -> Any:
    """Inputs and for_each: a string that is one whole reference becomes the referenced value;
    references inside a longer string are replaced by their text. Bounded by
    INPUTS_MAX_BYTES of text in all."""
    try:
        return _resolve(value, ctx, _Budget(INPUTS_MAX_BYTES, "the inputs", strict=False))
    except RecursionError:
        raise ResolveError("the value is nested too deeply") from None


def resolve_env(env: dict, ctx: dict) -> dict[str, str]:
    """`env:` resolved to the strings the process gets (a value that is not a string, or one
    whole reference to one, as JSON). Each value is bounded by ENV_VALUE_MAX_BYTES, all
    of them by ENV_MAX_BYTES, and none holds a NUL character."""
    total = _Budget(ENV_MAX_BYTES, "the environment of the step", strict=True)
    out = {}
    for name, value in env.items():
        if not isinstance(name, str) or not name or "=" in name or "\x00" in name:
            raise ResolveError(f"env: {name!r} is not a valid variable name")
        budget = _Budget(ENV_VALUE_MAX_BYTES, f"env variable {name}", strict=True)
        ref = _whole_ref(value) if isinstance(value, str) else None
        if isinstance(value, str) and ref is None:
            text, source = _substitute(value, ctx, budget, _as_is), None
        else:
            source = ref.text if ref else None
            value = lookup(ref, ctx) if ref else value
            # As the engine always passed them: a string as it is, anything else as JSON.
            text = budget.take(value if isinstance(value, str) else _json(value, budget.what), source)
        out[name] = total.take(text, source or budget.what)
    return out


def _json(value: Any, source: str) -> str:
    try:
        return json.dumps(value)
    except RecursionError:
        raise ResolveError(f"{source} is nested too deeply to be used as text") from None


def _as_is(value: str, _: int) -> str:
    return value


def quote_for(context: shell.Context, value: str) -> str:
    """`value` as literal text at a place of kind `context` in a shell command."""
    if context.kind == shell.WORD:
        return shlex.quote(value)
    if context.kind == shell.SINGLE:  # close '...', the quoted value, reopen
        return "'" + shlex.quote(value) + "'"
    if context.kind == shell.DOUBLE:  # close "...", the quoted value, reopen
        return '"' + shlex.quote(value) + '"'
    if context.kind == shell.COMMENT:  # text for people; a newline would end the comment
        return " ".join(value.splitlines())
    if context.kind == shell.HEREDOC:
        lines = value.split("\n")
        if any((line.lstrip("\t") if context.strip_tabs else line) == context.delimiter for line in lines):
            raise ResolveError(f"the value holds the line {context.delimiter!r} that ends its here-document")
        if not context.expands:
            return value
        return value.replace("\\", "\\\\").replace("$", "\\$").replace("`", "\\`")
    raise ResolveError(shell.UNSAFE)


def render_command(command: str, ctx: dict) -> str:
    """Substitute references into a shell command in one pass, each value quoted for where
    it stands (waves/shell.py), so it reaches the command as the literal text it is. The
    result is bounded by COMMAND_MAX_BYTES and holds no NUL character."""
    places = shell.contexts(command)
    budget = _Budget(COMMAND_MAX_BYTES, "the command", strict=True)
    rendered = _substitute(command, ctx, budget, lambda value, i: quote_for(places[i], value))
    if "<<" in rendered and (problem := shell.mangled_heredoc_line(rendered)):
        raise ResolveError(problem)
    return rendered


def expression_problem(expression: str) -> str | None:
    """Why a CEL expression is refused before it reaches the CEL library, or None."""
    if len(expression) > EXPRESSION_MAX_CHARS:
        return f"is longer than {EXPRESSION_MAX_CHARS} characters"
    depth = 0
    for char in expression:
        if char in "([{":
            depth += 1
            if depth > EXPRESSION_MAX_DEPTH:
                return f"is nested deeper than {EXPRESSION_MAX_DEPTH} levels of (), [] or {{}}"
        elif char in ")]}":
            depth -= 1
    return None


def evaluate(expression: str, ctx: dict) -> bool:
    shown = expression if len(expression) <= 200 else expression[:200] + "..."
    problem = expression_problem(expression)
    if problem:
        raise ResolveError(f"condition {shown!r} {problem}")
    if MACRO_RE.search(expression):
        result = _in_child(expression, ctx, shown)
    else:
        result = _cel(expression, ctx, shown)
    if not isinstance(result, bool):
        raise ResolveError(f"condition {shown!r} gave {result!r:.200}, not true or false")
    return result


def _cel(expression: str, ctx: dict, shown: str):
    try:
        return cel.evaluate(expression, ctx)
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # several types, and pyo3's PanicException is a BaseException
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:500]
        raise ResolveError(f"condition {shown!r} failed: {reason}") from None


def _in_child(expression: str, ctx: dict, shown: str):
    """Evaluate in a forked child, killed after EXPRESSION_MAX_SECONDS: a comprehension
    (`all`, `exists`, `map`, `filter`) over a big list, nested, is exponential in time, and
    CEL cannot be interrupted in this process."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: evaluate, send the answer, leave without any clean-up
        os.close(read_end)
        try:
            answer = {"result": _cel(expression, ctx, shown)}
        except ResolveError as exc:
            answer = {"error": str(exc)}
        try:
            os.write(write_end, json.dumps(answer, default=repr).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        data = b""
        deadline = time.monotonic() + EXPRESSION_MAX_SECONDS
        while (left := deadline - time.monotonic()) > 0 and select.select([read_end], [], [], left)[0]:
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            data += chunk
        else:
            os.kill(pid, signal.SIGKILL)
            raise ResolveError(f"condition {shown!r} took longer than {EXPRESSION_MAX_SECONDS}s")
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    try:
        answer = json.loads(data)
    except ValueError:
        raise ResolveError(f"condition {shown!r} failed: the evaluation crashed") from None
    if "error" in answer:
        raise ResolveError(answer["error"])
    return answer["result"]
