"""Kills the task process groups of an executor that died.

Started by the local runner with a pipe on stdin whose only writer is the executor.
The executor writes `+PGID` when it starts a task and `-PGID` when the task ends.
When the executor goes away, even by kill -9, the pipe reaches end-of-file and every
group still registered gets SIGTERM, then SIGKILL. Standard library only: it must run
with nothing but the interpreter.
"""

import os
import signal
import sys
import time

GRACE_SECONDS = 2.0


def main() -> None:
    # Terminal signals are the executor's to handle; this process only waits for EOF.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    groups: set[int] = set()
    for line in sys.stdin:
        line = line.strip()
        if line[:1] == "+":
            groups.add(int(line[1:]))
        elif line[:1] == "-":
            groups.discard(int(line[1:]))
    alive = [g for g in groups if _signal(g, signal.SIGTERM)]
    deadline = time.monotonic() + GRACE_SECONDS
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [g for g in alive if _signal(g, 0)]
    for g in alive:
        _signal(g, signal.SIGKILL)


def _signal(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


if __name__ == "__main__":
    main()
