"""Workflow files (YAML/JSON) and pipeline tables (seed 003) -> one normalised `Definition`.

Every problem raises `DefinitionError` with `file:line: step 'x': problem`, so a user can
jump straight to it. `validate` runs the checks that need the whole graph (unknown and
duplicate ids, cycles, CEL conditions naming only upstream steps); services call it again
before writing anything.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cel
import yaml

from waves import dag, refs

ID_RE = re.compile(r"[A-Za-z0-9_-]+")
MAX_FOR_EACH = 10_000
JOIN_POLICIES = ("all", "any", "always")

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
        return asdict(self)


# --------------------------------------------------------------------------- entry points


def load_path(
    path: str | Path, *, command_template: str | None = None, name: str | None = None
) -> Definition:
    """Read and validate a workflow file or pipeline table; format by extension, else content."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DefinitionError(f"cannot read file: {exc.strerror}", source=str(path))
    return load_text(
        text, source=str(path), suffix=path.suffix.lower(), command_template=command_template, name=name
    )


def load_text(
    text: str,
    *,
    source: str = "<string>",
    suffix: str = "",
    command_template: str | None = None,
    name: str | None = None,
) -> Definition:
    default_name = Path(source).stem if source and not source.startswith("<") else "workflow"
    if suffix in (".pipeline", ".txt") or (not suffix and _looks_like_table(text)):
        d = parse_pipeline(text, source=source, name=name or default_name, command_template=command_template)
    else:
        if suffix == ".json" or (suffix not in (".yaml", ".yml") and text.lstrip().startswith("{")):
            data, lines = _read_json(text, source)
        else:
            data, lines = _read_yaml(text, source), None
        d = parse_workflow(data, source=source, json_lines=lines, default_name=default_name)
        if name:
            d.name = name
    validate(d)
    return d


def _looks_like_table(text: str) -> bool:
    rows = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return bool(rows) and all(ln.count("|") >= 6 for ln in rows)


# --------------------------------------------------------------------------- YAML / JSON


class _LineDict(dict):
    """A mapping that remembers the line it started on (YAML marks)."""

    line: int | None = None


# libyaml's parser when PyYAML has it (about 10x faster on big files); marks work the same.
class _YamlLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    pass


def _construct_map(loader, node):
    d = _LineDict()
    d.line = node.start_mark.line + 1
    yield d
    d.update(loader.construct_mapping(node))


_YamlLoader.add_constructor("tag:yaml.org,2002:map", _construct_map)


def _read_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise DefinitionError(
            f"malformed YAML: {problem}", source=source, line=mark.line + 1 if mark else None
        )


def _read_json(text: str, source: str) -> tuple[Any, list[str]]:
    try:
        return json.loads(text), text.splitlines()
    except json.JSONDecodeError as exc:
        raise DefinitionError(
            f"malformed JSON: {exc.msg} (column {exc.colno})", source=source, line=exc.lineno
        )


def _json_line(lines: list[str], step_id: Any) -> int | None:
    """JSON has no marks: the line where `"id": "<step_id>"` is written."""
    pat = re.compile(r'"id"\s*:\s*' + re.escape(json.dumps(step_id)))
    return next((i for i, ln in enumerate(lines, 1) if pat.search(ln)), None)


def parse_workflow(
    data: Any,
    *,
    source: str = "<string>",
    json_lines: list[str] | None = None,
    default_name: str = "workflow",
) -> Definition:
    def err(problem, line=None, step=None):
        return DefinitionError(problem, source=source, line=line, step=step)

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
    mp = _int(data.get("max_parallelism", 4), "max_parallelism", err, minimum=1)
    steps_data = data.get("steps")
    if not isinstance(steps_data, list) or not steps_data:
        raise err("'steps' must be a non-empty list", 1)

    out: list[StepDef] = []

    def line_of(raw):
        if json_lines is not None:
            return _json_line(json_lines, raw.get("id")) if isinstance(raw, dict) else None
        return getattr(raw, "line", None)

    def walk(items, parent: StepDef | None, inherited: list[str]):
        for raw in items:
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
            step.depends_on = list(dict.fromkeys(step.depends_on + inherited))
            out.append(step)
            if step.kind == "group":
                children = raw.get("steps")
                if not isinstance(children, list) or not children:
                    raise err("a parallel block needs a non-empty 'steps' list", line, sid)
                walk(children, step, step.depends_on)

    walk(steps_data, None, [])
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
        _int(s.max_parallelism, "max_parallelism", err, minimum=1, line=line, step=sid)
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
        if not isinstance(k, str) or isinstance(v, dict | list) or v is None:
            raise e(f"'env' values must be strings or numbers (key {k!r})")
    s.env = {k: v if isinstance(v, str) else json.dumps(v) for k, v in env.items()}
    if "timeout" in raw:
        s.timeout_s = _int(raw["timeout"], "timeout", err, minimum=1, line=line, step=sid)
    s.retries = _int(raw.get("retries", 0), "retries", err, line=line, step=sid)
    em = typed("estimated_minutes", int | float, None)
    if em is not None and em < 0:
        raise e("'estimated_minutes' must be >= 0")
    s.estimated_minutes = None if em is None else float(em)
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
        delay = rep.get("delay", 0)
        if isinstance(delay, bool) or not isinstance(delay, int | float) or delay < 0:
            raise e(f"'repeat.delay' must be a number of seconds >= 0, got {delay!r}")
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
    """`N | profile | - | mode | group | minutes | title` lines (seed 003).

    A serial step (group `-`) depends on the previous serial step and every group step since
    it (so on everything before it); a group step depends on the serial step before it, so
    consecutive groups share a wave.
    """
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
        if not n.isdigit():
            raise err(f"malformed line: step number must be an integer, got {n!r}")
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
        if mins < 0:
            raise err("minutes must be >= 0", key)
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


def graph_of(steps: list[StepDef]) -> tuple[list[str], list[tuple[str, str]]]:
    """Executable nodes and (upstream, downstream) edges, with edges onto a group expanded
    to its (recursive) children. Groups are not nodes: their children carry their deps."""
    children: dict[str, list[str]] = {}
    for s in steps:
        if s.parent:
            children.setdefault(s.parent, []).append(s.key)
    kinds = {s.key: s.kind for s in steps}

    def leaves(key: str) -> list[str]:
        if kinds[key] != "group":
            return [key]
        return [leaf for c in children.get(key, []) for leaf in leaves(c)]

    nodes = [s.key for s in steps if s.kind != "group"]
    edges = [(up, s.key) for s in steps if s.kind != "group" for d in s.depends_on for up in leaves(d)]
    return nodes, list(dict.fromkeys(edges))


def validate(d: Definition) -> dag.Analysis:
    """Checks needing the whole definition; returns the analysis of its graph."""

    def err(problem, s: StepDef | None = None):
        return DefinitionError(
            problem, source=d.source, line=s.line if s else None, step=s.key if s else None
        )

    by_key: dict[str, StepDef] = {}
    for s in d.steps:
        if not ID_RE.fullmatch(s.key):
            raise err(f"bad id {s.key!r}: ids are [A-Za-z0-9_-]+", s)
        if s.key in by_key:
            first = by_key[s.key].line
            raise err(f"duplicate id '{s.key}'" + (f" (first defined on line {first})" if first else ""), s)
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
    nodes, edges = graph_of(d.steps)
    try:
        analysis = dag.analyze(nodes, edges)
    except dag.CycleError as exc:
        # Start the cycle at the step written first, where a reader will look.
        ring = exc.cycle[:-1]
        k = min(range(len(ring)), key=lambda i: by_key[ring[i]].position)
        ring = ring[k:] + ring[:k]
        raise err(f"dependency cycle: {' -> '.join(ring + ring[:1])}", by_key[ring[0]])

    for s in d.steps:
        checks = [("when", s.condition, False)]
        if s.repeat:
            checks.append(("repeat.until", s.repeat["until"], True))
        for what, text, self_ok in checks:
            if not text:
                continue
            try:
                cel.compile(text)
            except ValueError as exc:
                raise err(f"bad CEL in '{what}': {str(exc).splitlines()[0]}", s)
            allowed = analysis.ancestors(s.key) | ({s.key} if self_ok else set())
            for name in sorted(refs.condition_step_refs(text)):
                if name not in by_key:
                    raise err(f"'{what}' names an unknown step '{name}'", s)
                # A group counts as upstream when all of its leaves are.
                targets = _leaves_of(d.steps, name)
                if not set(targets) <= allowed:
                    raise err(f"'{what}' names step '{name}', which is not upstream of '{s.key}'", s)
    return analysis


def _leaves_of(steps: list[StepDef], key: str) -> list[str]:
    children = [s.key for s in steps if s.parent == key]
    if not children:
        return [key]
    return [leaf for c in children for leaf in _leaves_of(steps, c)]


def _explicit(s: StepDef) -> set[str]:
    """Dependencies not implied by a reference (to word the error like the user wrote it)."""
    implied = {r.step for r in refs.find_refs([s.command, s.inputs, s.env, s.for_each]) if r.kind == "steps"}
    return set(s.depends_on) - implied
