"""Who owns a run, and what happens when its owner dies.

A run has one owner at a time: the executor process that claimed it with a conditional
UPDATE (pending -> running, no owner yet), recorded as host and pid. The owner writes the
run's fields, each with its run.update event, and only while it still owns the run. It
heartbeats from a thread of its own, so a long turn of its loop never makes it look dead.
A run whose owner stopped heartbeating (or whose pid is gone from this host) is closed by
whoever notices: its running agents and tasks become lost, and a resume takes it on.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from executions import transitions
from executions.errors import OwnershipLost, ServiceError
from executions.models import (
    AgentStatus,
    BuildAgentInstance,
    ExecutionRun,
    RunStatus,
    TaskStatus,
    WaveStatus,
)
from executions.records import events_write, iso
from executions.sessions import session_leave

log = logging.getLogger(__name__)
LIVE = (RunStatus.PENDING, RunStatus.RUNNING)


def executor_identity() -> tuple[str, int]:
    return socket.gethostname(), os.getpid()


def run_payload(run: ExecutionRun) -> dict:
    return {
        "execution_id": run.pk,
        "task_list_id": run.task_list_id,
        "status": run.status,
        "started_at": iso(run.started_at),
        "completed_at": iso(run.completed_at),
        "max_parallelism": run.max_parallelism,
        "wall_seconds": run.wall_seconds,
        "task_seconds": run.task_seconds,
        "gate_wait_seconds": run.gate_wait_seconds,
        "peak_concurrency": run.peak_concurrency,
        "cancel_requested": run.cancel_requested_at is not None,
        "resumed_from": run.resumed_from_id,
    }


def run_update(run: ExecutionRun, *, now: datetime | None = None, owned: bool = True, **fields) -> None:
    """Set fields of a run and write its run.update event in the same transaction.

    `owned`: only while this process owns the run (a running run with our host and pid);
    raises OwnershipLost otherwise, and nothing is written."""
    now = now or timezone.now()
    rows = ExecutionRun.objects.filter(pk=run.pk)
    if owned:
        host, pid = executor_identity()
        rows = rows.filter(status=RunStatus.RUNNING, executor_hostname=host, executor_pid=pid)
    with transaction.atomic(savepoint=False):
        if not rows.update(**fields):
            raise OwnershipLost(f"run {run.pk} is no longer owned by this executor (pid {os.getpid()})")
        for name, value in fields.items():
            setattr(run, name, value)
        events_write([(run.pk, "run.update", run_payload(run))], now)


def run_claim(run: ExecutionRun, now: datetime) -> None:
    """Take a pending run: one conditional UPDATE, so of two executors (in any processes,
    on any machines) exactly one wins; the other is told who has it."""
    host, pid = executor_identity()
    fields = dict(
        status=RunStatus.RUNNING,
        started_at=now,
        executor_hostname=host,
        executor_pid=pid,
        executor_heartbeat=now,
    )
    with transaction.atomic(savepoint=False):
        claimed = ExecutionRun.objects.filter(
            pk=run.pk, status=RunStatus.PENDING, executor_pid__isnull=True
        ).update(**fields)
        if not claimed:
            run.refresh_from_db()
            state = "running" if run.status == RunStatus.RUNNING else f"already {run.status}"
            raise ServiceError(f"run {run.pk} cannot be started: it is {state}{owner_text(run)}")
        for name, value in fields.items():
            setattr(run, name, value)
        events_write([(run.pk, "run.update", run_payload(run))], now)


def owner_text(run: ExecutionRun) -> str:
    if not run.executor_pid:
        return ""
    beat = f", last heartbeat {iso(run.executor_heartbeat)}" if run.executor_heartbeat else ""
    return f" (executor pid {run.executor_pid} on {run.executor_hostname}{beat})"


class Heartbeat:
    """The owner's heartbeat, and its running agents', every HEARTBEAT_SECONDS.

    From a thread with its own database connection, so it does not wait for the loop.
    When the run was created in a transaction still open on the loop's connection (a test
    inside one), another connection cannot see it: then the loop calls `beat()` itself."""

    def __init__(self, run: ExecutionRun):
        self.run_id = run.pk
        self.host, self.pid = executor_identity()
        self.interval = settings.TIDEWATCH["HEARTBEAT_SECONDS"]
        self.lost = False  # the run was taken away (closed by another process)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.inline = connection.in_atomic_block
        self.next_inline = 0.0

    def start(self) -> None:
        if not self.inline:
            self._thread = threading.Thread(target=self._loop, name=f"heartbeat-run-{self.run_id}", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=60)

    def beat(self) -> None:
        now = timezone.now()
        with transaction.atomic():
            owned = ExecutionRun.objects.filter(
                pk=self.run_id, status=RunStatus.RUNNING, executor_hostname=self.host, executor_pid=self.pid
            ).update(executor_heartbeat=now)
            BuildAgentInstance.objects.filter(execution_id=self.run_id, status=AgentStatus.RUNNING).update(
                last_heartbeat=now
            )
        self.lost = self.lost or not owned

    def _loop(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                try:
                    self.beat()
                except Exception:  # a database hiccup: the next beat tries again
                    log.exception("heartbeat of run %s failed", self.run_id)
        finally:
            connection.close()


def executor_is_gone(run: ExecutionRun, now: datetime) -> bool:
    """Whether the run's executor is dead. On this host its pid says so at once (alive, even
    stopped or slow, is never dead); elsewhere, a heartbeat older than STALE_AFTER_SECONDS.
    A pending run nobody claimed yet is not abandoned: an executor may be on its way."""
    if run.status not in LIVE or not run.executor_pid:
        return False
    if run.executor_hostname == socket.gethostname():
        return not pid_alive(run.executor_pid)
    stale = timedelta(seconds=settings.TIDEWATCH["STALE_AFTER_SECONDS"])
    last = run.executor_heartbeat or run.started_at or run.created_at
    return last is not None and now - last > stale


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (an exited child not reaped yet) is not alive either.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return True


def run_close_abandoned(
    run: ExecutionRun,
    *,
    status: str,
    reason: str,
    actor: str | None = None,
    unowned: bool = False,
    mine: bool = False,
) -> bool:
    """Close a run whose executor died: its running agents and tasks become lost; with a
    cancel, what had not started is cancelled too (else it is left for a resume), and the
    run and its session close. Checked again under the run's lock: a live owner (a fresh
    heartbeat) keeps its run, and False says so. `unowned`: also close a run no executor
    has claimed yet (a cancel before it started). `mine`: the owner closing its own run
    after its loop failed."""
    now = timezone.now()
    with transaction.atomic():
        locked = ExecutionRun.objects.select_for_update().get(pk=run.pk)
        orphan = unowned and locked.executor_pid is None
        owner = mine and (locked.executor_hostname, locked.executor_pid) == executor_identity()
        if locked.status not in LIVE or not (orphan or owner or executor_is_gone(locked, now)):
            run.refresh_from_db()
            return False
        agents = list(BuildAgentInstance.objects.filter(execution=run, status=AgentStatus.RUNNING))
        transitions.agents_finish([(agent, AgentStatus.LOST, None, now) for agent in agents])
        running = list(run.wave_tasks.filter(status=TaskStatus.RUNNING))
        transitions.transition(
            running, TaskStatus.LOST, expected=TaskStatus.RUNNING, actor=actor,
            reason=f"executor lost ({reason})", now=now, completed_at=now,
        )  # fmt: skip
        if status == RunStatus.CANCELLED:
            # Gates waiting for approval keep waiting on a failed run (a resume carries
            # them), but a cancel ends everything.
            others = list(run.wave_tasks.filter(status__in=transitions.UNFINISHED - {TaskStatus.RUNNING}))
            transitions.transition(
                others, TaskStatus.CANCELLED, expected=transitions.UNFINISHED - {TaskStatus.RUNNING},
                actor=actor, reason=reason, now=now, completed_at=now,
            )  # fmt: skip
        # Waves that ran end with the run; with a cancel, the ones that never started too.
        cancel = status == RunStatus.CANCELLED
        open_waves = [WaveStatus.RUNNING, WaveStatus.PENDING] if cancel else [WaveStatus.RUNNING]
        for wave in run.waves.filter(status__in=open_waves):
            closed = WaveStatus.CANCELLED if cancel else WaveStatus.FAILED
            transitions.wave_update(wave, status=closed, completed_at=now, now=now)
        run_update(run, status=status, completed_at=now, error=reason, now=now, owned=False)
    session_leave(run, now)
    return True


def reap_abandoned_runs() -> list[int]:
    """Close every live run whose executor is gone; returns their ids."""
    now = timezone.now()
    reaped = []
    for run in ExecutionRun.objects.filter(status__in=LIVE):
        if executor_is_gone(run, now) and run_close_abandoned(
            run, status=RunStatus.FAILED, reason="executor stopped without closing the run"
        ):
            reaped.append(run.pk)
    return reaped
