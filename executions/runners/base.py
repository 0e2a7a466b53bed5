"""The runner seam between the engine and whatever runs a task's process.

The engine decides what runs when and records everything; a runner only starts attempts,
reports what happens to them, and stops them on request. Everything a runner needs comes
in the `LaunchSpec`, so a worker on another machine (no access to the executor's disk)
can run the attempt from it alone. The local runner keeps files, directories and
processes to itself; what comes back is a stream of events from `poll()`:

- `Started`: the attempt's process is up (pid and host). It comes from the runner, after
  `launch()` returned, because a remote worker starts it later and elsewhere.
- `Output`: a line it printed (`stdout`, `stderr`) or a note from the runner (`system`).
- `Finished`: how it ended, its outputs and its `$TIDEWATCH_EVENTS` lines. An attempt that
  could not be started at all finishes with `exit_code=None` and `error` saying why; one
  whose worker vanished, with `lost=True`.
  `launch()` never raises for something about the attempt itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    run_id: int
    key: str  # the step's key in the run, e.g. "extract" or "per_region[2]"
    attempt: int  # 1, 2, ... over the step's whole life in the run (retries and iterations)
    command: str  # the shell command, every `${...}` already substituted and quoted
    inputs: dict[str, Any] = field(default_factory=dict)  # resolved: $TIDEWATCH_INPUTS
    env: dict[str, str] = field(default_factory=dict)  # the task's own variables and TIDEWATCH_*
    timeout_s: float | None = None
    queue: str | None = None  # where a distributed runner sends it (None: the default)

    @property
    def handle(self) -> str:
        """Names the attempt in every event about it: unique within the run."""
        return f"{self.key}#{self.attempt}"


@dataclass(frozen=True, slots=True)
class Started:
    handle: str
    pid: int
    hostname: str
    at: float | None = None  # when it started (time.time()); None: when it is reported


@dataclass(frozen=True, slots=True)
class Output:
    handle: str
    stream: str  # "stdout", "stderr" or "system" (a note from the runner, e.g. a truncation)
    text: str


@dataclass(frozen=True, slots=True)
class Finished:
    handle: str
    exit_code: int | None  # None: it never started (see error) or its end was not seen
    timed_out: bool = False
    cancelled: bool = False  # terminated on request (terminate / terminate_all)
    lost: bool = False  # whatever ran it vanished (a worker whose heartbeat went stale); see error
    outputs: dict | None = None
    output_error: str | None = None  # $TIDEWATCH_OUTPUT was written but cannot be used
    events: list[str] = field(default_factory=list)  # lines of $TIDEWATCH_EVENTS, capped
    error: str | None = None  # it could not be started: why
    at: float | None = None  # when it ended (time.time()); None: when it is reported


RunnerEvent = Started | Output | Finished


class Runner(Protocol):
    # True when a launched attempt may wait (in a broker's queue) before anything runs it: its
    # step stays `queued` until the runner reports it `Started`, so no display counts it as
    # running while it waits for a worker.
    queues: bool

    def launch(self, spec: LaunchSpec) -> None: ...

    def poll(self, timeout: float) -> list[RunnerEvent]: ...

    def terminate(self, handle: str) -> None: ...

    def terminate_all(self) -> None: ...

    def close(self) -> None: ...
