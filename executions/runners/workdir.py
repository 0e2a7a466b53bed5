"""An attempt's work directory and environment, and what it leaves behind.

Each attempt gets WORK_DIR/run-ID/KEY.attempt-N holding `inputs.json` ($TIDEWATCH_INPUTS),
`output.json` ($TIDEWATCH_OUTPUT, written by the task), `events.jsonl` ($TIDEWATCH_EVENTS)
and `.exitcode`, which the attempt's own shell writes as it ends (as Nextflow's does). A
resume reads `.exitcode` to record an attempt that finished while its executor was dying
instead of running it again. Whoever runs the attempt (the local runner, a Celery worker)
prepares it with `prepare()` and reads it back with `outputs()` and `events()`, every read
bounded by the caps in settings.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from executions.runners.base import LaunchSpec
from executions.values import outputs_parse

# Never passed to a task: the executor's own secrets and where its services are.
ENV_DENY = (
    "DATABASE_URL",
    "SECRET_KEY",
    "DJANGO_SECRET_KEY",
    "REDIS_URL",
    "CELERY_BROKER_URL",
    "PGPASSWORD",
    "TIDEWATCH_ADMIN_PASSWORD",
)
# Linux refuses one argument or variable longer than this (MAX_ARG_STRLEN): an input too
# long for its own $TIDEWATCH_INPUT_* variable is read from $TIDEWATCH_INPUTS instead.
ENV_VALUE_MAX_BYTES = 128 * 1024 - 64
ENV_INPUTS_MAX_BYTES = 1024 * 1024  # all $TIDEWATCH_INPUT_* together

# `sh -c WRAPPER sh COMMAND`: the command runs in this one shell, as `sh -c COMMAND` would
# (no positional parameters; the variable holding it is unset first), and the EXIT trap
# leaves its exit status in the work directory as the shell ends, whether the command ran
# to its end or called `exit` (`printf` is a builtin: no process more). Killed by a signal,
# it leaves none: the attempt did not finish.
WRAPPER = (
    "trap 'printf \"%s\\n\" \"$?\" > \"$TIDEWATCH_WORK_DIR/.exitcode\"' EXIT; "
    '__tidewatch_command=$1; shift; eval "unset __tidewatch_command; $__tidewatch_command"'
)


def attempt_dir(run_id: int, key: str, attempt: int) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", key)
    if name != key:  # "a[1]" and "a_1_" must not share a directory
        name += "-" + hashlib.sha1(key.encode()).hexdigest()[:8]
    return Path(settings.TIDEWATCH["WORK_DIR"]) / f"run-{run_id}" / f"{name}.attempt-{attempt}"


def base_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The executor's environment without what a task must not see."""
    patterns = (*ENV_DENY, *settings.TIDEWATCH["ENV_DENY"])
    environ = os.environ if environ is None else environ
    return {
        name: value
        for name, value in environ.items()
        if not any(fnmatch.fnmatchcase(name, p) for p in patterns)
    }


@dataclass
class Prepared:
    work_dir: Path
    argv: list[str]
    env: dict[str, str]
    notes: list[str]  # for the transcript, e.g. an input read only from $TIDEWATCH_INPUTS


def prepare(spec: LaunchSpec, base_env: dict[str, str]) -> Prepared:
    """Make the attempt's directory and inputs file; the argv and environment to start it.
    Raises OSError (or ValueError for a value that cannot be passed) when it cannot."""
    work_dir = attempt_dir(spec.run_id, spec.key, spec.attempt)
    work_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("output.json", "events.jsonl", ".exitcode"):  # a rerun of the same attempt
        (work_dir / stale).unlink(missing_ok=True)
    inputs_file = work_dir / "inputs.json"
    inputs_file.write_text(json.dumps(spec.inputs, ensure_ascii=False), encoding="utf-8")
    env = {**base_env, **spec.env}
    notes, budget = [], ENV_INPUTS_MAX_BYTES
    for name, value in spec.inputs.items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > min(ENV_VALUE_MAX_BYTES, budget) or "\x00" in text:
            notes.append(f"input {name!r} ({size} bytes) is only in $TIDEWATCH_INPUTS")
            continue
        budget -= size
        env[f"TIDEWATCH_INPUT_{re.sub(r'[^A-Za-z0-9]', '_', name).upper()}"] = text
    env.update(
        TIDEWATCH_WORK_DIR=str(work_dir),
        TIDEWATCH_OUTPUT=str(work_dir / "output.json"),
        TIDEWATCH_INPUTS=str(inputs_file),
        TIDEWATCH_EVENTS=str(work_dir / "events.jsonl"),
    )
    return Prepared(work_dir, ["/bin/sh", "-c", WRAPPER, "sh", spec.command], env, notes)


def outputs(work_dir: Path) -> tuple[dict | None, str | None]:
    """What the attempt wrote to $TIDEWATCH_OUTPUT: (outputs, None) or (None, why not)."""
    path, cap = work_dir / "output.json", settings.TIDEWATCH["OUTPUT_MAX_BYTES"]
    try:
        with path.open("rb") as fh:
            raw = fh.read(cap + 1)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"cannot read $TIDEWATCH_OUTPUT: {exc}"
    if len(raw) > cap:
        return None, f"$TIDEWATCH_OUTPUT is larger than the {cap}-byte cap (OUTPUT_MAX_BYTES)"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"$TIDEWATCH_OUTPUT is not UTF-8: {exc}"
    return outputs_parse(text)


def events(work_dir: Path) -> tuple[list[str], list[str]]:
    """The lines of $TIDEWATCH_EVENTS, within the caps: (lines, notes on what was dropped).
    Reads the file in bounded pieces: a huge line or a million lines cost no memory."""
    path = work_dir / "events.jsonl"
    max_lines = settings.TIDEWATCH["EVENTS_MAX_LINES"]
    max_line = settings.TIDEWATCH["EVENT_LINE_MAX_BYTES"]
    max_total = settings.TIDEWATCH["TRANSCRIPT_MAX_BYTES"]
    lines: list[str] = []
    total = long = past = 0
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        return [], []
    except OSError as exc:
        return [], [f"cannot read $TIDEWATCH_EVENTS: {exc}"]
    with fh:
        while line := fh.readline(max_line + 1):
            if len(line) > max_line and not line.endswith(b"\n"):
                long += 1
                while (rest := fh.readline(1 << 20)) and not rest.endswith(b"\n"):
                    pass
                continue
            if not line.strip():
                continue
            if len(lines) >= max_lines or total + len(line) > max_total:
                past += 1
                continue
            total += len(line)
            lines.append(line.decode("utf-8", "replace").rstrip("\r\n"))
    notes = []
    if long:
        notes.append(f"[truncated: {long} event line(s) longer than {max_line} bytes dropped]")
    if past:
        notes.append(
            f"[truncated: {past} event line(s) past the cap of {max_lines} lines or {max_total} bytes dropped]"
        )
    return lines, notes


@dataclass(frozen=True)
class AttemptResult:
    exit_code: int
    outputs: dict | None
    output_error: str | None


def result(run_id: int, key: str, attempt: int) -> AttemptResult | None:
    """How a finished attempt ended, from what it left in its work directory; None when it
    did not finish (or left nothing readable)."""
    work_dir = attempt_dir(run_id, key, attempt)
    try:
        code = int((work_dir / ".exitcode").read_text().strip())
    except (OSError, ValueError):
        return None
    found, error = outputs(work_dir)
    return AttemptResult(code, found, error)
