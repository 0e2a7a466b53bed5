"""A scripted runner: the engine's loop with no processes.

Each step's attempts end as scripted (exit code, outputs, lines, events), after a number
of polls; `hold` keeps an attempt running until the test releases it. Started comes from
the poll after launch(), as from a real runner."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from executions.runners.base import Finished, LaunchSpec, Output, Started


@dataclass
class Script:
    exit_code: int | None = 0
    outputs: dict | None = None
    lines: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    error: str | None = None  # could not start
    polls: int = 1  # polls it runs for
    output_error: str | None = None


class FakeRunner:
    def __init__(self, scripts: dict[str, Script | list[Script]] | None = None, *, crash_on_poll: int | None = None):
        self.scripts = scripts or {}
        self.launched: list[LaunchSpec] = []
        self.pending: list = []
        self.in_flight: dict[str, tuple[LaunchSpec, Script, int]] = {}
        self.held: set[str] = set()  # step keys kept running until released
        self.terminated: list[str] = []
        self.closed = False
        self.polls = 0
        self.crash_on_poll = crash_on_poll
        self.on_poll = None  # called with the runner at each poll (a test's hook)

    def script_for(self, spec: LaunchSpec) -> Script:
        script = self.scripts.get(spec.key, Script())
        if isinstance(script, list):
            return script[min(spec.attempt, len(script)) - 1]
        return script

    def launch(self, spec: LaunchSpec) -> None:
        self.launched.append(spec)
        script = self.script_for(spec)
        if script.error:
            self.pending.append(Finished(spec.handle, None, error=script.error))
            return
        self.pending.append(Started(spec.handle, 10_000 + len(self.launched), "fakehost", at=time.time()))
        self.in_flight[spec.handle] = (spec, script, 0)

    def poll(self, timeout: float) -> list:
        self.polls += 1
        if self.on_poll:
            self.on_poll(self)
        if self.crash_on_poll and self.polls >= self.crash_on_poll:
            raise RuntimeError("the runner broke")
        out, self.pending = self.pending, []
        for handle, (spec, script, polls) in list(self.in_flight.items()):
            if spec.key in self.held:
                continue
            if polls + 1 < script.polls:
                self.in_flight[handle] = (spec, script, polls + 1)
                continue
            del self.in_flight[handle]
            out += [Output(handle, "stdout", line) for line in script.lines]
            out.append(
                Finished(handle, script.exit_code, outputs=script.outputs, events=list(script.events),
                         output_error=script.output_error, at=time.time())  # fmt: skip
            )
        return out

    def release(self, key: str) -> None:
        self.held.discard(key)

    def terminate(self, handle: str) -> None:
        if handle in self.in_flight:
            del self.in_flight[handle]
            self.terminated.append(handle)
            self.pending.append(Finished(handle, -15, cancelled=True))

    def terminate_all(self) -> None:
        for handle in list(self.in_flight):
            self.terminate(handle)

    def close(self) -> None:
        self.closed = True
