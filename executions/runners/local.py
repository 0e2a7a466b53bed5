"""Local processes: each attempt is `sh -c COMMAND` in its own session and process group.

The attempt's directory, environment and leftovers are executions/runners/workdir.py's.

One thread does everything: a selector waits on every running attempt's stdout and
stderr, lines are cut as they arrive, exits are reaped without blocking, deadlines
(timeouts, kill grace periods) are checked on every poll. A timeout or a cancel sends
SIGTERM to the whole group, then SIGKILL after a grace period. A watchdog process
(executions/watchdog.py) kills the groups if the executor itself dies.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

from executions.runners import workdir
from executions.runners.base import Finished, LaunchSpec, Output, RunnerEvent, Started

KILL_GRACE_SECONDS = 2.0
# After the shell exits, how long its pipes may stay open (a background child holding
# them) before the rest of its group is killed.
PIPE_LINGER_SECONDS = 0.5
# When an attempt ends, poll() also waits for those started up to COALESCE_MAX after it, as
# much later as they started later, plus COALESCE_GAP (see poll).
COALESCE_GAP_SECONDS = 0.002
COALESCE_MAX_SECONDS = 0.015


@dataclass
class _Attempt:
    spec: LaunchSpec
    proc: subprocess.Popen
    started: float
    deadline: float | None
    work_dir: Path
    open_streams: int = 2
    kept: int = 0  # transcript bytes passed on; past TRANSCRIPT_MAX_BYTES the rest is counted
    dropped_lines: int = 0
    dropped_bytes: int = 0
    buffers: dict = field(default_factory=lambda: {"stdout": bytearray(), "stderr": bytearray()})
    dropping: dict = field(default_factory=lambda: {"stdout": 0, "stderr": 0})
    exit_code: int | None = None
    exited_at: float | None = None
    ended_at: float | None = None  # time.time() when its exit was seen
    timed_out: bool = False
    cancelled: bool = False
    kill_at: float | None = None


class LocalRunner:
    queues = False  # an attempt's process starts at launch

    def __init__(self, *, max_line_bytes: int | None = None):
        self.max_line_bytes = max_line_bytes or settings.TIDEWATCH["TRANSCRIPT_ENTRY_MAX_BYTES"]
        self.max_bytes = settings.TIDEWATCH["TRANSCRIPT_MAX_BYTES"]
        self.base_env = workdir.base_environment()
        self.pending: list[RunnerEvent] = []  # reported at the next poll
        self.hostname = socket.gethostname()
        self.selector = selectors.DefaultSelector()
        self.attempts: dict[str, _Attempt] = {}
        self.ended_starts: list[float] = []  # start times of the attempts ended in this poll
        self.watchdog = subprocess.Popen(
            [sys.executable, "-I", str(Path(__file__).resolve().parent.parent / "watchdog.py")],
            stdin=subprocess.PIPE,
            start_new_session=True,
        )

    # --- the Runner interface -------------------------------------------------------------

    def launch(self, spec: LaunchSpec) -> None:
        """Start the attempt; its Started (or a Finished saying why it could not start)
        comes with the next poll. Never raises for something about the attempt."""
        try:
            prepared = workdir.prepare(spec, self.base_env)
            proc = subprocess.Popen(
                prepared.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=prepared.env,
                # Its own session and process group (pgid == pid): a timeout or a cancel
                # reaches all of it, and it has no controlling terminal, so a prompt on
                # /dev/tty (ssh, git, sudo) fails at once instead of stopping the task.
                start_new_session=True,
            )
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self.pending.append(Finished(spec.handle, None, error=f"could not start: {reason}", at=time.time()))
            return
        self._tell_watchdog(f"+{proc.pid}")
        now = time.monotonic()
        deadline = now + spec.timeout_s if spec.timeout_s else None
        self.attempts[spec.handle] = _Attempt(spec, proc, now, deadline, prepared.work_dir)
        for stream, pipe in (("stdout", proc.stdout), ("stderr", proc.stderr)):
            os.set_blocking(pipe.fileno(), False)
            self.selector.register(pipe, selectors.EVENT_READ, (spec.handle, stream))
        self.pending.append(Started(spec.handle, proc.pid, self.hostname, at=time.time()))
        self.pending += [Output(spec.handle, "system", note) for note in prepared.notes]

    def poll(self, timeout: float) -> list[RunnerEvent]:
        self.ended_starts.clear()
        events, self.pending = self.pending, []
        events += self._poll(0 if events else timeout)
        # Attempts started together end together. When some end, those started just after
        # them are likely to end as much later as they started later: wait that long (plus
        # COALESCE_GAP), so one turn of the executor records them all and starts what they
        # unblock, instead of one turn each.
        if self.ended_starts and self.attempts:
            latest = max(self.ended_starts)
            offsets = {h: a.started - latest for h, a in self.attempts.items()}
            later = {h for h, d in offsets.items() if 0 <= d <= COALESCE_MAX_SECONDS}
            end = time.monotonic() + max((offsets[h] for h in later), default=0.0) + COALESCE_GAP_SECONDS
            while later and (left := end - time.monotonic()) > 0:
                events += self._poll(left)
                later &= self.attempts.keys()
        return events

    def _poll(self, timeout: float) -> list[Output | Finished]:
        events: list[Output | Finished] = []
        if self.attempts:
            # Exited shells whose pipes linger must be looked at again soon.
            if any(
                a.exit_code is not None or a.kill_at or not a.open_streams for a in self.attempts.values()
            ):
                timeout = min(timeout, 0.005)
            for key, _ in self.selector.select(timeout):
                self._read(key.fileobj, *key.data, events)
        elif timeout > 0:
            time.sleep(timeout)
        now = time.monotonic()
        for handle, attempt in list(self.attempts.items()):
            if attempt.exit_code is None:
                code = attempt.proc.poll()
                if code is not None:
                    attempt.exit_code, attempt.exited_at, attempt.ended_at = code, now, time.time()
            if (
                attempt.deadline
                and now >= attempt.deadline
                and attempt.exit_code is None
                and not attempt.kill_at
            ):
                attempt.timed_out = True
                self._stop(attempt, now)
            if attempt.kill_at and now >= attempt.kill_at:
                self._killpg(attempt.proc.pid, signal.SIGKILL)
                attempt.kill_at = None
            if attempt.exit_code is not None:
                if attempt.open_streams and now - attempt.exited_at > PIPE_LINGER_SECONDS:
                    self._killpg(attempt.proc.pid, signal.SIGKILL)
                    for pipe, stream in ((attempt.proc.stdout, "stdout"), (attempt.proc.stderr, "stderr")):
                        if not pipe.closed:
                            self._close_stream(pipe, handle, stream, events)
                if not attempt.open_streams:
                    events += self._finish(handle, attempt)
        return events

    def terminate(self, handle: str) -> None:
        attempt = self.attempts.get(handle)
        if attempt and not attempt.cancelled:
            attempt.cancelled = True
            self._stop(attempt, time.monotonic())

    def terminate_all(self) -> None:
        for handle in list(self.attempts):
            self.terminate(handle)

    def close(self) -> None:
        for attempt in self.attempts.values():
            self._killpg(attempt.proc.pid, signal.SIGKILL)
        self.selector.close()
        if self.watchdog.stdin:
            self.watchdog.stdin.close()  # EOF: the watchdog exits
        try:
            self.watchdog.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.watchdog.kill()

    # --- internals -----------------------------------------------------------------------

    def _read(self, pipe, handle: str, stream: str, events: list) -> None:
        attempt = self.attempts[handle]
        try:
            data = os.read(pipe.fileno(), 65536)
        except BlockingIOError:
            return
        if not data:
            self._close_stream(pipe, handle, stream, events)
            return
        buf = attempt.buffers[stream]
        if attempt.kept >= self.max_bytes:  # past the cap: count what is dropped, keep nothing
            attempt.dropped_lines += data.count(b"\n")
            attempt.dropped_bytes += len(buf) + len(data)
            attempt.dropping[stream] = 0
            buf.clear()
            return
        buf += data
        while True:
            newline = buf.find(b"\n")
            if newline < 0:
                break
            self._emit(attempt, stream, bytes(buf[:newline]), events)
            del buf[: newline + 1]
        if len(buf) > self.max_line_bytes:
            # A line longer than the cap: keep its start, count the rest until its newline.
            if not attempt.dropping[stream]:
                events.append(Output(handle, stream, buf[: self.max_line_bytes].decode("utf-8", "replace")))
                attempt.dropping[stream] = len(buf) - self.max_line_bytes
            else:
                attempt.dropping[stream] += len(buf)
            buf.clear()

    def _emit(self, attempt: _Attempt, stream: str, line: bytes, events: list) -> None:
        handle = attempt.spec.handle
        if attempt.kept >= self.max_bytes:
            attempt.dropped_lines += 1
            attempt.dropped_bytes += len(line) + 1
            return
        attempt.kept += min(len(line), self.max_line_bytes) + 1
        dropped = attempt.dropping[stream]
        if dropped:
            attempt.dropping[stream] = 0
            total = self.max_line_bytes + dropped + len(line)
            events.append(
                Output(
                    handle, stream, f"[truncated: line of {total} bytes, first {self.max_line_bytes} kept]"
                )
            )
            return
        if len(line) > self.max_line_bytes:
            text = line[: self.max_line_bytes].decode("utf-8", "replace")
            events.append(Output(handle, stream, text))
            events.append(
                Output(
                    handle,
                    stream,
                    f"[truncated: line of {len(line)} bytes, first {self.max_line_bytes} kept]",
                )
            )
            return
        events.append(Output(handle, stream, line.decode("utf-8", "replace").rstrip("\r")))

    def _close_stream(self, pipe, handle: str, stream: str, events: list) -> None:
        attempt = self.attempts[handle]
        rest = bytes(attempt.buffers[stream])
        if attempt.kept >= self.max_bytes:
            attempt.dropped_lines += bool(rest)
            attempt.dropped_bytes += len(rest)
        elif rest or attempt.dropping[stream]:
            self._emit(attempt, stream, rest, events)
        attempt.buffers[stream].clear()
        self.selector.unregister(pipe)
        pipe.close()
        attempt.open_streams -= 1

    def _finish(self, handle: str, attempt: _Attempt) -> list[RunnerEvent]:
        del self.attempts[handle]
        self.ended_starts.append(attempt.started)
        # Anything the task left running in its group ends with it.
        self._killpg(attempt.proc.pid, signal.SIGKILL)
        self._tell_watchdog(f"-{attempt.proc.pid}")
        notes = []
        if attempt.dropped_bytes:
            notes.append(
                f"[truncated: {attempt.dropped_lines} line(s), {attempt.dropped_bytes} bytes of output "
                f"dropped past the {self.max_bytes}-byte cap per attempt (TRANSCRIPT_MAX_BYTES)]"
            )
        lines, dropped = workdir.events(attempt.work_dir)
        outputs, output_error = workdir.outputs(attempt.work_dir)
        return [Output(handle, "system", note) for note in notes + dropped] + [
            Finished(
                handle,
                attempt.exit_code,
                timed_out=attempt.timed_out,
                cancelled=attempt.cancelled,
                outputs=outputs,
                output_error=output_error,
                events=lines,
                at=attempt.ended_at,
            )
        ]

    def _stop(self, attempt: _Attempt, now: float) -> None:
        self._killpg(attempt.proc.pid, signal.SIGTERM)
        attempt.kill_at = now + KILL_GRACE_SECONDS

    @staticmethod
    def _killpg(pgid: int, sig: int) -> None:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _tell_watchdog(self, line: str) -> None:
        try:
            self.watchdog.stdin.write(f"{line}\n".encode())
            self.watchdog.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass

