"""Checks shared by the executor tests (real processes, real databases)."""

import subprocess
import time

from executions.models import BuildAgentInstance, ExecutionRun, TaskStatusAudit, WaveTask


def assert_audit_replays(run: ExecutionRun) -> None:
    """Replaying each wave task's audit rows in id order reproduces its final status, with
    no gap and no duplicate; and no attempt was launched twice."""
    history: dict[int, list] = {}
    for row in TaskStatusAudit.objects.filter(execution=run).order_by("id"):
        history.setdefault(row.wave_task_id, []).append((row.previous_status, row.new_status))
    for wt in WaveTask.objects.filter(execution=run):
        rows = history.get(wt.pk, [])
        assert rows, f"{wt.key}: no audit rows"
        status = None
        for previous, new in rows:
            assert previous == status, f"{wt.key}: audit chain broken at {previous}->{new}: {rows}"
            assert new != previous, f"{wt.key}: duplicate {new}: {rows}"
            status = new
        assert status == wt.status, f"{wt.key}: audit ends at {status}, task is {wt.status}: {rows}"
    attempts = list(BuildAgentInstance.objects.filter(execution=run).values_list("wave_task_id", "attempt"))
    assert len(attempts) == len(set(attempts)), "an attempt was launched twice"


def max_overlap(intervals) -> int:
    """Most intervals open at once (an end at t comes before a start at t)."""
    points = sorted(
        [(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda p: (p[0], p[1])
    )
    best = cur = 0
    for _, delta in points:
        cur += delta
        best = max(best, cur)
    return best


def agents_peak(agents) -> int:
    """Most agents running at once, from their recorded start and end."""
    return max_overlap([(a.started_at, a.completed_at) for a in agents])


def pid_alive(pid: int) -> bool:
    """Alive and not a zombie, whoever its parent is."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def wait_for(
    predicate, timeout=60.0, interval=0.05, *, proc: subprocess.Popen | None = None, what="condition"
):
    """Poll until predicate() is true; fail early, with its stderr, if `proc` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(
                f"executor exited {proc.returncode} while waiting for {what}: {proc.stderr.read()}"
            )
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")
