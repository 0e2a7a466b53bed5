"""Workflow files (YAML/JSON) and pipeline tables -> one normalised `Definition`.

Every problem raises `DefinitionError` with `file:line: step 'x': problem`, so a user can
jump straight to it. `validate` runs the checks that need the whole graph (unknown and
duplicate ids, cycles, CEL conditions naming only upstream steps, the columns' bounds);
services call it again before writing anything.

A file is bounded before it is parsed (size, UTF-8, NUL) and while it is (YAML nesting and
alias expansion from the event stream), and its data is checked (`_check_data`) before any
of our code walks it: nothing recursive ever sees more than MAX_DEPTH levels, so no input
can crash, hang or reach the database with a value one backend stores and the other refuses.
"""

from __future__ import annotations

import functools
import json
import math
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cel
import yaml
from django.conf import settings

from waves import dag, refs, shell

ID_RE = re.compile(r"[A-Za-z0-9_-]+")
MAX_FOR_EACH = 10_000
JOIN_POLICIES = ("all", "any", "always")

# Bounds checked before anything reaches the database or the CEL compiler (which panics or
# overflows its stack on very long or deeply nested expressions). String lengths come from
# the model fields (`COLUMNS`); the file size from settings.TIDEWATCH["IMPORT_MAX_BYTES"].
MAX_DEPTH = 64  # nesting of mappings and lists in a file; of ( [ { in a condition
MAX_ALIAS_VALUES = 100_000  # what YAML aliases may add (values + characters), or the file's length
MAX_LINKS = 1_000_000  # dependencies once a parallel block stands for its steps
MAX_CEL_CHARS = 4096
MAX_TIMEOUT_S = 7 * 24 * 3600  # also the longest repeat.delay
MAX_RETRIES = 100
MAX_MINUTES = 1_000_000.0  # estimated_minutes
MAX_COLUMN_INT = 2**31 - 1  # PositiveIntegerField on PostgreSQL
MAX_JSON_INT = 2**63 - 1  # integers inside inputs, env and for_each

TOP_KEYS = {"name", "description", "max_parallelism", "steps"}
STEP_KEYS = {
    "id", "title", "template", "run", "depends_on", "inputs", "timeout", "retries", "env",
    "estimated_minutes", "type", "when", "for_each", "max_parallelism", "repeat", "approval",
    "branch", "join_policy",
}  # fmt: skip
BLOCK_KEYS = {"id", "title", "type", "steps", "max_parallelism", "join_policy", "depends_on", "branch"}
REPEAT_KEYS = {"until", "max_iterations", "delay"}


class DefinitionError(ValueError):
    """Bad input; the message names the file, the line, the step and the problem."""

    def __init__(self, problem: str, *, source: str = "", line: int | None = None, step: str | None = None):
        self.problem, self.source, self.line, self.step = problem, source, line, step
        where = source + (f":{line}" if line else "")
        parts = [where] if where else []
        if step:
            parts.append(f"step '{step}'")
        parts.append(problem)
        super().__init__(": ".join(parts))


@dataclass
class StepDef:
    key: str
    title: str = ""
    display_id: str = ""
    template: str = ""
    kind: str = "task"  # task | gate | group
    command: str = ""
    inputs: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    timeout_s: int | None = None
    retries: int = 0
    parallel_group: str = ""
    branch_name: str = ""
    parent: str | None = None
    join_policy: str = "all"
    max_parallelism: int | None = None
    estimated_minutes: float | None = None
    condition: str = ""
    for_each: list | str | None = None
    repeat: dict | None = None
    approval: bool = False
    position: int = 0
    depends_on: list[str] = field(default_factory=list)
    line: int | None = None  # where the step starts in the source, for messages


@dataclass
class Definition:
    name: str
    description: str = ""
    max_parallelism: int = 4
    format: str = "workflow"  # workflow | pipeline
    steps: list[StepDef] = field(default_factory=list)
    source: str = ""

    def to_json(self) -> dict:
        """Like dataclasses.asdict, without deep-copying values that are already JSON (a
        third of the write time of a big import)."""
        return {**vars(self), "steps": [dict(vars(s)) for s in self.steps]}


# --------------------------------------------------------------------------- entry points


def load_path(
    path: str | Path, *, command_template: str | None = None, name: str | None = None
) -> Definition:
    """Read and validate a workflow file or pipeline table; format by extension, else content."""
    path = Path(path)
    limit = settings.TIDEWATCH["IMPORT_MAX_BYTES"]
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise DefinitionError(f"cannot read file: {exc.strerror}", source=str(path))
    return load_bytes(
        data, source=str(path), suffix=path.suffix.lower(), command_template=command_template, name=name
    )


def load_bytes(data: bytes, *, source: str = "<bytes>", suffix: str = "", **options) -> Definition:
    """A file's content (or an upload): at most IMPORT_MAX_BYTES of UTF-8; see `load_text`."""
    limit = settings.TIDEWATCH["IMPORT_MAX_BYTES"]
    if len(data) > limit:
        raise DefinitionError(_too_big(limit), source=source)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DefinitionError(
            f"the file is not UTF-8: byte 0x{data[exc.start]:02x} at offset {exc.start} cannot be decoded",
            source=source,
            line=data.count(b"\n", 0, exc.start) + 1,
        )
    return load_text(text, source=source, suffix=suffix, **options)


def load_text(
    text: str,
    *,
    source: str = "<string>",
    suffix: str = "",
    command_template: str | None = None,
    name: str | None = None,
) -> Definition:
    _check_text(text, source)
    text = text.removeprefix("\ufeff")
    default_name = Path(source).stem if source and not source.startswith("<") else "workflow"
    with dag.gc_paused():
        if suffix in (".pipeline", ".txt") or (not suffix and _looks_like_table(text)):
            d = parse_pipeline(
                text, source=source, name=name or default_name, command_template=command_template
            )
        else:
            if suffix == ".json" or (suffix not in (".yaml", ".yml") and text.lstrip().startswith("{")):
                data, id_lines = _read_json(text, source), _json_id_lines(text)
            else:
                data, id_lines = _read_yaml(text, source), None
            d = parse_workflow(data, source=source, json_lines=id_lines, default_name=default_name)
            if name:
                d.name = name
        validate(d)
    return d


def _too_big(limit: int) -> str:
    return f"the file is larger than the import limit of {limit:,} bytes (TIDEWATCH_IMPORT_MAX_BYTES)"


def _check_text(text: str, source: str) -> None:
    """Size, encodability and NUL characters of the whole text (escapes are checked later)."""
    limit = settings.TIDEWATCH["IMPORT_MAX_BYTES"]
    try:
        if len(text) > limit or len(text.encode("utf-8")) > limit:
            raise DefinitionError(_too_big(limit), source=source)
    except UnicodeEncodeError as exc:
        line = text.count("\n", 0, exc.start) + 1
        raise DefinitionError(
            f"the text is not valid Unicode at character {exc.start}", source=source, line=line
        )
    nul = text.find("\x00")
    if nul >= 0:
        line = text.count("\n", 0, nul) + 1
        raise DefinitionError(
            "the text contains a NUL character, which cannot be stored", source=source, line=line
        )


def _looks_like_table(text: str) -> bool:
    rows = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return bool(rows) and all(ln.count("|") >= 6 for ln in rows)


# --------------------------------------------------------------------------- YAML / JSON


class _LineDict(dict):
    """A mapping that remembers the line it started on (YAML marks); `duplicate` is a key
    written twice in it (JSON: reported by `_check_data`, which knows where it is)."""

    line: int | None = None
    duplicate: str | None = None


# libyaml's parser when PyYAML has it (about 10x faster on big files); marks work the same.
class _YamlLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    pass


def _construct_map(loader, node):
    d = _LineDict()
    d.line = node.start_mark.line + 1
    yield d
    first: dict = {}  # key -> the line it was first written on
    for key_node, _ in node.value:
        line = key_node.start_mark.line + 1
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: its keys may be overridden
            key = "<<"
        else:
            key = loader.construct_object(key_node)  # cached: construct_mapping reuses it
        try:
            if key in first:
                raise DefinitionError(f"duplicate key {key!r} (first on line {first[key]})", line=line)
            first[key] = line
        except TypeError:  # unhashable: construct_mapping says so
            continue
    d.update(loader.construct_mapping(node))


_YamlLoader.add_constructor("tag:yaml.org,2002:map", _construct_map)


def _read_yaml(text: str, source: str) -> Any:
    try:
        _scan_yaml(text)
        return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - SafeLoader subclass
    except DefinitionError as exc:
        raise DefinitionError(exc.problem, source=source, line=exc.line)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise DefinitionError(
            f"malformed YAML: {problem}", source=source, line=mark.line + 1 if mark else None
        )
    except ValueError as exc:  # a timestamp out of range, an integer of 5,000 digits
        raise DefinitionError(f"malformed YAML: {exc}", source=source)


def _scan_yaml(text: str) -> None:
    """Read the event stream (libyaml's parser does not recurse) before anything is built:
    nesting past MAX_DEPTH would overflow the C stack of the composer, and aliases may add
    at most max(MAX_ALIAS_VALUES, len(text)) to the document, counting each value as 1 plus
    its length (a "billion laughs" expands exponentially; an alias of a long string, once
    per step, fills the database; an alias inside its own anchor makes a cycle)."""
    budget = max(MAX_ALIAS_VALUES, len(text))
    sizes: dict[str, int] = {}  # anchor -> size it stands for
    open_: list[tuple[str | None, int]] = []  # collections being read: anchor, count at start
    count = expanded = 0
    for event in yaml.parse(text, Loader=_YamlLoader):
        if isinstance(event, yaml.AliasEvent):
            if event.anchor not in sizes:
                how = "its own anchor" if any(a == event.anchor for a, _ in open_) else "no anchor before it"
                raise DefinitionError(
                    f"alias *{event.anchor} refers to {how}", line=event.start_mark.line + 1
                )
            count += sizes[event.anchor]
            expanded += sizes[event.anchor]
            if expanded > budget:
                raise DefinitionError(
                    f"aliases expand the file by more than {budget:,} values and characters",
                    line=event.start_mark.line + 1,
                )
        elif isinstance(event, yaml.ScalarEvent):
            count += 1 + len(event.value)
            if event.anchor:
                sizes[event.anchor] = 1 + len(event.value)
        elif isinstance(event, yaml.CollectionStartEvent):
            count += 1
            open_.append((event.anchor, count))
            if len(open_) > MAX_DEPTH:
                raise DefinitionError(
                    f"nested deeper than {MAX_DEPTH} levels", line=event.start_mark.line + 1
                )
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, start = open_.pop()
            if anchor:
                sizes[anchor] = count - start + 1


def _json_object(pairs: list) -> dict:
    d = dict(pairs)
    if len(d) < len(pairs):
        seen: set = set()
        d = _LineDict(d)
        d.duplicate = next(k for k, _ in pairs if k in seen or seen.add(k))
    return d


def _read_json(text: str, source: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_json_object)
    except json.JSONDecodeError as exc:
        raise DefinitionError(
            f"malformed JSON: {exc.msg} (column {exc.colno})", source=source, line=exc.lineno
        )
    except RecursionError:  # json's C scanner counts its depth: a clean error, no crash
        raise DefinitionError(f"nested deeper than {MAX_DEPTH} levels", source=source)
    except ValueError as exc:  # an integer of 5,000 digits
        raise DefinitionError(f"malformed JSON: {exc}", source=source)


_JSON_ID_RE = re.compile(r'"id"\s*:\s*("(?:[^"\\]|\\.)*")')


def _json_id_lines(text: str) -> dict[str, int]:
    """JSON has no marks: the line where `"id": "<step id>"` is first written, for every id,
    in one pass (a search per step made import quadratic)."""
    found: dict[str, int] = {}
    line, pos = 1, 0
    for m in _JSON_ID_RE.finditer(text):
        line += text.count("\n", pos, m.start())
        pos = m.start()
        try:
            found.setdefault(json.loads(m[1]) if "\\" in m[1] else m[1][1:-1], line)
        except ValueError:
            pass
    return found


_PLAIN = (str, bool, int, float, type(None))


def _check_data(data: Any, err, line_of) -> None:
    """Refuse, before anything walks or stores `data`, what only JSON types, the database and
    our recursion-free code can hold: nesting past MAX_DEPTH, keys that are not text, dates,
    sets and binary (YAML), non-finite floats and floats of 1e16 or more, integers past 64
    bits, text with NUL or lone surrogates, and (JSON) a key written twice. The message names
    the line and the path."""
    stack = [(data, (), getattr(data, "line", None), None)]  # value, path, line, step
    while stack:
        value, path, line, step = stack.pop()
        problem = None
        if isinstance(value, dict | list) and len(path) >= MAX_DEPTH:  # the same count as _scan_yaml
            problem = f"nested deeper than {MAX_DEPTH} levels"
        elif isinstance(value, dict):
            if len(path) >= 2 and path[-2] == "steps" and isinstance(value.get("id"), str):
                step, line = value["id"], line_of(value) or line
            line = getattr(value, "line", None) or line
            bad_keys = [k for k in value if not isinstance(k, str) or _text_problem(k)]
            if getattr(value, "duplicate", None) is not None:
                problem = f"duplicate key {value.duplicate!r}"
            elif bad_keys and isinstance(bad_keys[0], str):
                problem = f"key {bad_keys[0]!r}: {_text_problem(bad_keys[0])}"
            elif bad_keys:
                problem = (
                    f"key {bad_keys[0]!r} is a {type(bad_keys[0]).__name__}: keys must be text (quote it)"
                )
            else:
                stack.extend((value[k], (*path, k), line, step) for k in reversed(value))
        elif isinstance(value, list):
            stack.extend((value[i], (*path, i), line, step) for i in reversed(range(len(value))))
        elif not isinstance(value, _PLAIN):
            problem = f"a {type(value).__name__} value is not allowed (quote it to make it text)"
        elif isinstance(value, float) and not math.isfinite(value):
            problem = f"{value} is not a finite number"
        elif isinstance(value, float) and abs(value) >= 1e16:
            # PostgreSQL's jsonb gives 1e16 back as 10000000000000000, an integer.
            problem = f"{value!r}: a fraction this large reads back differently; write an integer or text"
        elif isinstance(value, int) and not -MAX_JSON_INT <= value <= MAX_JSON_INT:
            problem = "the integer is out of range (64 bits)"
        elif isinstance(value, str):
            problem = _text_problem(value)
        if problem:
            where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
            raise err(f"{where or 'the file'}: {problem}", line, step)


def _text_problem(text: str) -> str | None:
    if "\x00" in text:
        return "the text contains a NUL character, which cannot be stored"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "the text contains a lone surrogate (an invalid \\uD800-\\uDFFF escape)"
    return None


def parse_workflow(
    data: Any,
    *,
    source: str = "<string>",
    json_lines: dict[str, int] | None = None,
    default_name: str = "workflow",
) -> Definition:
    """`data` as read from YAML (mappings carry their line) or JSON (`json_lines`: the line
    of each step id, from `_json_id_lines`)."""

    def err(problem, line=None, step=None):
        return DefinitionError(problem, source=source, line=line, step=step)

    def line_of(raw):
        if json_lines is not None:
            sid = raw.get("id") if isinstance(raw, dict) else None
            return json_lines.get(sid) if isinstance(sid, str) else None
        return getattr(raw, "line", None)

    _check_data(data, err, line_of)
    if not isinstance(data, dict):
        raise err("the workflow must be a mapping with name and steps", getattr(data, "line", 1))
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise err(f"unknown key '{unknown[0]}' at top level (allowed: {', '.join(sorted(TOP_KEYS))})", 1)
    name = data.get("name", default_name)
    if not isinstance(name, str) or not name.strip():
        raise err("'name' must be a non-empty string", 1)
    description = data.get("description", "")
    if not isinstance(description, str):
        raise err("'description' must be a string", 1)
    mp = _int(data.get("max_parallelism", 4), "max_parallelism", err, minimum=1, maximum=MAX_COLUMN_INT)
    steps_data = data.get("steps")
    if not isinstance(steps_data, list) or not steps_data:
        raise err("'steps' must be a non-empty list", 1)

    out: list[StepDef] = []
    links = 0
    # Depth first, in file order, without recursion: (steps left, enclosing block).
    todo: list[tuple[Any, StepDef | None]] = [(iter(steps_data), None)]
    while todo:
        items, parent = todo[-1]
        raw = next(items, todo)  # the list itself marks the end: it is never a step
        if raw is todo:
            todo.pop()
            continue
        line = line_of(raw)
        if not isinstance(raw, dict):
            raise err(f"each step must be a mapping, got {type(raw).__name__}", line)
        sid = raw.get("id")
        if not isinstance(sid, str) or not ID_RE.fullmatch(sid):
            raise err(f"bad id {sid!r}: ids are [A-Za-z0-9_-]+", line)
        step = _parse_step(raw, sid, line, err)
        step.position = len(out)
        if parent is not None:
            step.parent = parent.key
            step.parallel_group = parent.key
            step.branch_name = step.branch_name or sid
            # Children inherit the block's dependencies (the executor relies on it).
            step.depends_on = list(dict.fromkeys(step.depends_on + parent.depends_on))
        links += len(step.depends_on)
        if links > MAX_LINKS:
            raise err(_too_many_links(), line, sid)
        out.append(step)
        if step.kind == "group":
            children = raw.get("steps")
            if not isinstance(children, list) or not children:
                raise err("a parallel block needs a non-empty 'steps' list", line, sid)
            todo.append((iter(children), step))
    return Definition(
        name=name.strip(), description=description, max_parallelism=mp, format="workflow",
        steps=out, source=source,
    )  # fmt: skip


def _int(value, what, err, *, minimum=0, maximum=None, line=None, step=None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise err(f"'{what}' must be an integer, got {type(value).__name__}", line, step)
    if value < minimum or (maximum is not None and value > maximum):
        rng = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
        raise err(f"'{what}' must be {rng}, got {value}", line, step)
    return value


def _number(value, what, err, *, maximum, line=None, step=None) -> int | float:
    """A finite number from 0 to `maximum`; bool is not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise err(f"'{what}' must be a number, got {type(value).__name__}", line, step)
    if not 0 <= value <= maximum:  # false for nan too
        raise err(f"'{what}' must be a number from 0 to {maximum:g}, got {value!r}", line, step)
    return value


def _parse_step(raw: dict, sid: str, line, err) -> StepDef:
    def e(problem):
        return err(problem, line, sid)

    is_block = raw.get("type") == "parallel"
    if "type" in raw and raw["type"] not in ("parallel", "task"):
        raise e(f"unknown type {raw['type']!r} (allowed: parallel, task)")
    allowed = BLOCK_KEYS if is_block else STEP_KEYS
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise e(f"unknown key '{unknown[0]}' (allowed: {', '.join(sorted(allowed))})")

    def typed(key, types, default):
        v = raw.get(key, default)
        if v is not default and (
            not isinstance(v, types) or isinstance(v, bool) and bool not in _tuple(types)
        ):
            names = "/".join(t.__name__ for t in _tuple(types))
            raise e(f"'{key}' must be {names}, got {type(v).__name__}")
        return v

    s = StepDef(key=sid, display_id=sid)
    s.line = line
    s.title = typed("title", str, sid)
    s.template = typed("template", str, sid)
    if not s.template.strip():
        raise e("'template' must not be empty")
    deps = raw.get("depends_on", [])
    if isinstance(deps, str):
        deps = [deps]
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        raise e("'depends_on' must be a step id or a list of step ids")
    s.branch_name = typed("branch", str, "")
    s.max_parallelism = raw.get("max_parallelism")
    if s.max_parallelism is not None:
        _int(
            s.max_parallelism, "max_parallelism", err, minimum=1, maximum=MAX_COLUMN_INT, line=line, step=sid
        )
    s.join_policy = typed("join_policy", str, "all")
    if s.join_policy not in JOIN_POLICIES:
        raise e(f"'join_policy' must be one of {', '.join(JOIN_POLICIES)}, got {s.join_policy!r}")
    if is_block:
        s.kind = "group"
        s.template = typed("template", str, "parallel")
        s.depends_on = list(dict.fromkeys(deps))
        return s

    s.command = typed("run", str, "")
    s.inputs = dict(typed("inputs", dict, {}))
    env = typed("env", dict, {})
    for k, v in env.items():
        if not k or "=" in k:
            raise e(f"'env' names must be non-empty and without '=' (key {k!r})")
        if isinstance(v, dict | list) or v is None:
            raise e(f"'env' values must be strings or numbers (key {k!r})")
    s.env = {k: v if isinstance(v, str) else json.dumps(v) for k, v in env.items()}
    if "timeout" in raw:
        s.timeout_s = _int(
            raw["timeout"], "timeout", err, minimum=1, maximum=MAX_TIMEOUT_S, line=line, step=sid
        )
    s.retries = _int(raw.get("retries", 0), "retries", err, maximum=MAX_RETRIES, line=line, step=sid)
    if raw.get("estimated_minutes") is not None:
        em = _number(
            raw["estimated_minutes"], "estimated_minutes", err, maximum=MAX_MINUTES, line=line, step=sid
        )
        s.estimated_minutes = float(em)
    s.condition = typed("when", str, "").strip()
    s.approval = typed("approval", bool, False)
    if s.approval:
        s.kind = "gate"

    fe = raw.get("for_each")
    if fe is not None:
        if isinstance(fe, str):
            found = refs.REF_RE.fullmatch(fe.strip())
            if not found or refs.parse_ref(found[0]).kind != "steps":
                raise e("'for_each' must be a list or one ${steps.<id>.outputs...} reference")
            fe = fe.strip()
        elif isinstance(fe, list):
            if len(fe) > MAX_FOR_EACH:
                raise e(f"'for_each' has {len(fe)} items, more than the limit of {MAX_FOR_EACH}")
        else:
            raise e(f"'for_each' must be a list or a reference string, got {type(fe).__name__}")
        s.for_each = fe
    elif s.max_parallelism is not None:
        raise e("'max_parallelism' on a step needs 'for_each' (or type: parallel)")

    rep = raw.get("repeat")
    if rep is not None:
        if not isinstance(rep, dict):
            raise e(f"'repeat' must be a mapping, got {type(rep).__name__}")
        unknown = sorted(set(rep) - REPEAT_KEYS)
        if unknown:
            raise e(f"unknown key '{unknown[0]}' in repeat (allowed: until, max_iterations, delay)")
        until = rep.get("until")
        if not isinstance(until, str) or not until.strip():
            raise e("'repeat' needs 'until' (a CEL condition)")
        mi = _int(
            rep.get("max_iterations", 10),
            "repeat.max_iterations",
            err,
            minimum=1,
            maximum=1000,
            line=line,
            step=sid,
        )
        delay = _number(rep.get("delay", 0), "repeat.delay", err, maximum=MAX_TIMEOUT_S, line=line, step=sid)
        s.repeat = {"until": until.strip(), "max_iterations": mi, "delay": delay}

    # References: syntax, ${item}/${iteration} only where they mean something, implied deps.
    try:
        found_refs = refs.find_refs([s.command, s.inputs, s.env, s.for_each])
    except refs.RefError as exc:
        raise e(str(exc))
    for r in found_refs:
        if r.kind == "item" and s.for_each is None:
            raise e(f"{r.text} is only available in a step with 'for_each'")
        if r.kind == "iteration" and s.repeat is None:
            raise e(f"{r.text} is only available in a step with 'repeat'")
    if isinstance(s.command, str) and any(c.kind == shell.BACKQUOTE for c in shell.contexts(s.command)):
        raise e(f"run: {shell.UNSAFE}")
    if isinstance(s.command, str) and "<<" in s.command and (problem := shell.mangled_heredoc_line(s.command)):
        raise e(f"run: {problem}")
    implied = [r.step for r in found_refs if r.kind == "steps"]
    s.depends_on = list(dict.fromkeys(deps + implied))
    return s


def _tuple(types):
    return getattr(types, "__args__", None) or (types if isinstance(types, tuple) else (types,))


# --------------------------------------------------------------------------- pipeline tables

MODES = ("auto", "gate", "manual")
TEMPLATE_FIELDS = ("n", "profile", "mode", "group", "minutes", "title")


def parse_pipeline(
    text: str, *, source: str = "<string>", name: str = "pipeline", command_template: str | None = None
) -> Definition:
    """`N | profile | - | mode | group | minutes | title` lines.

    A serial step (group `-`) depends on the previous serial step and every group step since
    it (so on everything before it); a group step depends on the serial step before it, so
    consecutive groups share a wave.
    """
    if command_template and _text_problem(command_template):
        raise DefinitionError(f"--command-template: {_text_problem(command_template)}", source=source)
    steps: list[StepDef] = []
    last_serial: StepDef | None = None
    since_serial: list[str] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue

        def err(problem, step=None, lineno=lineno):
            return DefinitionError(problem, source=source, line=lineno, step=step)

        cols = [c.strip() for c in line.split("|", 6)]
        if len(cols) != 7:
            raise err(
                f"malformed line: expected 'N | profile | - | mode | group | minutes | title', got {line!r}"
            )
        n, profile, _unused, mode, group, minutes, title = cols
        if not re.fullmatch(r"[0-9]{1,9}", n):
            raise err(f"malformed line: step number must be an integer of at most 9 digits, got {n!r}")
        key = f"step-{int(n)}"
        if not profile or not ID_RE.fullmatch(profile):
            raise err(f"bad profile {profile!r}: profiles are [A-Za-z0-9_-]+", key)
        if mode not in MODES:
            raise err(f"mode must be one of {', '.join(MODES)}, got {mode!r}", key)
        if group != "-" and not ID_RE.fullmatch(group):
            raise err(f"bad group {group!r}: groups are [A-Za-z0-9_-]+ or '-'", key)
        try:
            mins = float(minutes)
        except ValueError:
            raise err(f"minutes must be a number, got {minutes!r}", key)
        if not 0 <= mins <= MAX_MINUTES:  # false for nan too
            raise err(f"minutes must be a number from 0 to {MAX_MINUTES:g}, got {minutes!r}", key)
        s = StepDef(
            key=key, title=title, display_id=str(int(n)), template=profile,
            kind="gate" if mode != "auto" else "task", approval=mode != "auto",
            parallel_group="" if group == "-" else group, estimated_minutes=mins,
            position=int(n), line=lineno,
        )  # fmt: skip
        if command_template:
            fields = {
                "n": n,
                "profile": profile,
                "mode": mode,
                "group": group,
                "minutes": minutes,
                "title": title,
            }
            try:
                s.command = command_template.format(**{k: shlex.quote(v) for k, v in fields.items()})
            except (KeyError, IndexError, ValueError) as exc:
                raise err(
                    f"bad --command-template: {exc!s} (fields: {', '.join('{' + f + '}' for f in TEMPLATE_FIELDS)})",
                    key,
                )
        if group == "-":
            s.depends_on = ([last_serial.key] if last_serial else []) + since_serial
            last_serial, since_serial = s, []
        else:
            s.depends_on = [last_serial.key] if last_serial else []
            since_serial.append(key)
        steps.append(s)
    if not steps:
        raise DefinitionError("the pipeline has no steps", source=source)
    return Definition(name=name, format="pipeline", steps=steps, source=source)


# --------------------------------------------------------------------------- whole-graph checks


def _leaves(steps: list[StepDef]):
    """key -> the executable steps under it (itself unless it is a parallel block), without
    recursion, each block's list computed once."""
    children: dict[str, list[str]] = {}
    for s in steps:
        if s.parent:
            children.setdefault(s.parent, []).append(s.key)
    kinds = {s.key: s.kind for s in steps}
    memo: dict[str, list[str]] = {}

    def leaves(key: str) -> list[str]:
        if kinds.get(key) != "group":
            return [key]
        if key not in memo:
            found, stack = [], [key]
            while stack:
                k = stack.pop()
                if kinds.get(k) == "group":
                    stack.extend(reversed(children.get(k, [])))
                else:
                    found.append(k)
            memo[key] = found
        return memo[key]

    return leaves


def graph_of(steps: list[StepDef]) -> tuple[list[str], list[tuple[str, str]]]:
    """Executable nodes and (upstream, downstream) edges, with edges onto a group expanded
    to its (recursive) children. Groups are not nodes: their children carry their deps."""
    leaves = _leaves(steps)
    nodes = [s.key for s in steps if s.kind != "group"]
    edges = [(up, s.key) for s in steps if s.kind != "group" for d in s.depends_on for up in leaves(d)]
    return nodes, list(dict.fromkeys(edges))


# StepDef attribute, what the file calls it, the model and field whose max_length bounds it.
COLUMNS = [
    ("key", "id", "Task", "key"),
    ("display_id", "id", "Task", "display_id"),
    ("title", "title", "Task", "title"),
    ("template", "template", "TaskTemplate", "name"),
    ("parallel_group", "group", "Task", "parallel_group"),
    ("branch_name", "branch", "Task", "branch_name"),
]


@functools.cache
def max_length(model: str, field: str) -> int:
    from django.apps import apps  # models are ready by the time anything is imported

    return apps.get_model("waves", model)._meta.get_field(field).max_length


def validate(d: Definition) -> dag.Analysis:
    """Checks needing the whole definition, and every column's bounds (the same on SQLite and
    PostgreSQL); returns the analysis of its graph."""

    def err(problem, s: StepDef | None = None):
        return DefinitionError(
            problem, source=d.source, line=s.line if s else None, step=s.key if s else None
        )

    for what, text, limit in [
        ("name", d.name, max_length("TaskList", "title")),
        ("description", d.description, None),
    ]:
        problem = _text_problem(text) or _length_problem(text, limit)
        if problem:
            raise err(f"'{what}': {problem}")
    by_key: dict[str, StepDef] = {}
    depth: dict[str, int] = {}  # parallel blocks around a step
    for s in d.steps:
        if not ID_RE.fullmatch(s.key):
            raise err(f"bad id {s.key!r}: ids are [A-Za-z0-9_-]+", s)
        for attr, what, model, field_name in COLUMNS:
            value = getattr(s, attr)
            problem = _text_problem(value) or _length_problem(value, max_length(model, field_name))
            if problem:
                raise err(f"'{what}': {problem}", s)
        for attr, what in (("command", "run"), ("condition", "when")):
            problem = _text_problem(getattr(s, attr))
            if problem:
                raise err(f"'{what}': {problem}", s)
        if s.key in by_key:
            first = by_key[s.key].line
            raise err(f"duplicate id '{s.key}'" + (f" (first defined on line {first})" if first else ""), s)
        if s.parent is not None:
            if s.parent not in by_key or by_key[s.parent].kind != "group":
                raise err(f"unknown parallel block '{s.parent}' (a block comes before its steps)", s)
            depth[s.key] = depth.get(s.parent, 0) + 1
            if depth[s.key] > MAX_DEPTH:
                raise err(f"parallel blocks nested deeper than {MAX_DEPTH} levels", s)
        by_key[s.key] = s
    for s in d.steps:
        for dep in s.depends_on:
            if dep not in by_key:
                how = "reference to an unknown step" if dep not in _explicit(s) else "unknown dependency"
                raise err(f"{how} '{dep}'", s)
            if dep == s.key:
                raise err("a step cannot depend on itself", s)
            p = s.parent
            while p:
                if p == dep:
                    raise err(f"a step cannot depend on its enclosing parallel block '{dep}'", s)
                p = by_key[p].parent
    leaves = _leaves(d.steps)
    if sum(len(leaves(dep)) for s in d.steps if s.kind != "group" for dep in s.depends_on) > MAX_LINKS:
        raise err(_too_many_links())
    nodes, edges = graph_of(d.steps)
    try:
        analysis = dag.analyze(nodes, edges)
    except dag.CycleError as exc:
        # Start the cycle at the step written first, where a reader will look.
        ring = exc.cycle[:-1]
        k = min(range(len(ring)), key=lambda i: by_key[ring[i]].position)
        ring = ring[k:] + ring[:k]
        raise err(f"dependency cycle: {' -> '.join(ring + ring[:1])}", by_key[ring[0]])

    named: list[tuple[StepDef, str, str, list[str]]] = []  # step, field, name, executable steps
    for s in d.steps:
        checks = [("when", s.condition, False)]
        if s.repeat:
            checks.append(("repeat.until", s.repeat["until"], True))
        for what, text, self_ok in checks:
            if not text:
                continue
            problem = _cel_problem(text)
            if problem:
                raise err(f"'{what}' {problem}", s)
            try:
                cel.compile(text)
            except ValueError as exc:
                raise err(f"bad CEL in '{what}': {str(exc).splitlines()[0]}", s)
            for name in sorted(refs.condition_step_refs(text)):
                if name not in by_key:
                    raise err(f"'{what}' names an unknown step '{name}'", s)
                # A group counts as upstream when all of its leaves are.
                named.append((s, what, name, [t for t in leaves(name) if not (self_ok and t == s.key)]))
    upstream = _upstream_pairs(analysis, [(s.key, t) for s, _, _, targets in named for t in targets])
    for s, what, name, targets in named:
        if not all((s.key, t) in upstream for t in targets):
            raise err(f"'{what}' names step '{name}', which is not upstream of '{s.key}'", s)
    return analysis


def _too_many_links() -> str:
    return (
        f"the dependencies come to more than {MAX_LINKS:,} links (children inherit their "
        "block's, and depending on a block means depending on every step in it)"
    )


def _length_problem(text: str, limit: int | None) -> str | None:
    if limit is not None and len(text) > limit:
        return f"{len(text):,} characters, more than the {limit} its column holds"
    return None


_BRACKETS_RE = re.compile(r"[()\[\]{}]")


def _cel_problem(text: str) -> str | None:
    """Bounds that keep the CEL compiler safe (it panics or overflows its stack on very long
    or deeply nested input). Brackets inside string literals count too: the bound only errs
    on the safe side, and the length bound holds whatever the nesting."""
    if len(text) > MAX_CEL_CHARS:
        return f"is {len(text):,} characters long, more than the limit of {MAX_CEL_CHARS:,}"
    depth = deepest = 0
    for ch in _BRACKETS_RE.findall(text):
        depth += 1 if ch in "([{" else -1
        deepest = max(deepest, depth)
    if deepest > MAX_DEPTH:
        return f"nests ( [ {{ deeper than {MAX_DEPTH} levels"
    return None


def _upstream_pairs(analysis: dag.Analysis, pairs: list[tuple[str, str]]) -> set[tuple[str, str]]:
    """The (node, target) pairs where target is an ancestor of node. One pass over the graph
    in topological order per 4,096 distinct targets, carrying as bits which of them lie
    upstream of each node: linear when many conditions name the same few steps (a search
    per condition was quadratic on long chains)."""
    targets = list(dict.fromkeys(t for _, t in pairs))
    order = [v for wave in analysis.waves for v in wave]
    found: set[tuple[str, str]] = set()
    for i in range(0, len(targets), 4096):
        bit = {t: 1 << j for j, t in enumerate(targets[i : i + 4096])}
        reach: dict[str, int] = {}
        for v in order:
            r = 0
            for u in analysis.upstream[v]:
                r |= reach[u] | bit.get(u, 0)
            reach[v] = r
        found.update(p for p in pairs if p[1] in bit and reach.get(p[0], 0) & bit[p[1]])
    return found


def _explicit(s: StepDef) -> set[str]:
    """Dependencies not implied by a reference (to word the error like the user wrote it)."""
    implied = {r.step for r in refs.find_refs([s.command, s.inputs, s.env, s.for_each]) if r.kind == "steps"}
    return set(s.depends_on) - implied
