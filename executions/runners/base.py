"""The runner interface between the engine and whatever runs a task's process.

The engine decides what runs when and records everything; a runner only starts
attempts, reports what they print and how they end, and stops them on request. The
local runner uses OS processes on this machine; a Celery runner reports the same
events from workers elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    handle: str  # unique per attempt within the run, e.g. "extract#2"
    command: str
    env: dict[str, str]
    work_dir: Path  # holds output.json, inputs.json and events.jsonl of the attempt
    timeout_s: float | None = None


@dataclass(frozen=True, slots=True)
class Started:
    handle: str
    pid: int
    hostname: str


@dataclass(frozen=True, slots=True)
class Output:
    handle: str
    stream: str  # "stdout" or "stderr"
    text: str


@dataclass(frozen=True, slots=True)
class Finished:
    handle: str
    exit_code: int | None
    timed_out: bool = False
    cancelled: bool = False
    outputs: dict | None = None
    output_error: str | None = None  # $TIDEWATCH_OUTPUT was written but is not a JSON object
    events: list[str] = field(default_factory=list)  # raw lines of $TIDEWATCH_EVENTS


class Runner(Protocol):
    def launch(self, spec: LaunchSpec) -> Started: ...

    def poll(self, timeout: float) -> list[Output | Finished]: ...

    def terminate(self, handle: str) -> None: ...

    def terminate_all(self) -> None: ...

    def close(self) -> None: ...
