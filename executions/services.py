"""The one place where runs, waves, wave tasks and agents change.

Every status change of a task in a run goes through `transition()` (or
`wave_tasks_create()` for the first status), which writes the new status, one
`task_status_audit` row per task and one event-log row per task in a single
transaction. Other processes (cancel_run, approve_step, the admin, the API) use the
same functions, so the audit and the event log are complete whoever made the change.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections import defaultdict
from collections.abc import Iterable
from contextlib import contextmanager
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.db.models.functions import Greatest
from django.utils import timezone

from executions.capture import StatusChange
from executions.models import (
    AgentStatus,
    BuildAgentInstance,
    ConcurrentExecutionSession,
    Event,
    ExecutionRun,
    ParallelExecutionWave,
    RunStatus,
    SessionStatus,
    TaskStatus,
    TaskStatusAudit,
    WaveStatus,
    WaveTask,
)
from executions.signals import agent_changed, task_status_changed, wave_changed
from waves.services import CHUNK


class ServiceError(Exception):
    """A request that cannot be carried out; the message says why."""


def iso(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with a Z, as every payload and API shows times."""
    return value.isoformat().replace("+00:00", "Z") if value else None


class _Batch:
    """What `batch()` gathers: audit rows, event-log rows and session counter moves.

    They are written in the order of their times, not of the calls: the executor starts
    the steps a success unblocks before it records that success (so they start sooner),
    and the audit, the event log and the session peaks still read in causal order."""

    def __init__(self):
        self.audits: list[TaskStatusAudit] = []
        self.events: list[Event] = []
        self.counts: dict[int, list[tuple]] = defaultdict(list)  # session -> moves

    def write(self) -> None:
        if self.audits:
            TaskStatusAudit.objects.bulk_create(sorted(self.audits, key=lambda a: a.changed_at))
        if self.events:
            Event.objects.bulk_create(sorted(self.events, key=lambda e: e.created_at))
        for session_id, moves in self.counts.items():
            # At equal times a finish comes before a start: the peak is not inflated.
            moves.sort(key=lambda m: (m[0], m[1] + m[2] > 0))
            tasks = agents = tasks_high = agents_high = started = 0
            for _, t, a, s in moves:
                tasks, agents, started = tasks + t, agents + a, started + s
                tasks_high, agents_high = max(tasks_high, tasks), max(agents_high, agents)
            _session_update(
                session_id,
                tasks=tasks,
                agents=agents,
                tasks_high=tasks_high,
                agents_high=agents_high,
                started=started,
            )


_local = threading.local()


def _pending() -> _Batch | None:
    return getattr(_local, "batch", None)


@contextmanager
def batch():
    """Inside a transaction: gather the audit rows, event-log rows and session counter
    moves of many changes and write them when the block ends, ordered by time (one INSERT
    each, one UPDATE per session) instead of once per change. Status updates themselves
    are not deferred. The executor wraps each turn of its loop in one."""
    if _pending() is not None:
        yield
        return
    assert transaction.get_connection().in_atomic_block, "batch() belongs inside transaction.atomic()"
    _local.batch = pending = _Batch()
    try:
        yield
    finally:
        _local.batch = None
    pending.write()


def events_write(rows: Iterable[tuple[int | None, str, dict]], now: datetime) -> None:
    """Append (execution_id, type, payload) rows to the event log."""
    events = [
        Event(execution_id=ex, type=type_, payload=payload, created_at=now) for ex, type_, payload in rows
    ]
    if (pending := _pending()) is not None:
        pending.events.extend(events)
    else:
        Event.objects.bulk_create(events)


def _task_event(wt: WaveTask, previous: str | None, actor: str | None, reason: str | None, now: datetime):
    return (
        wt.execution_id,
        "task.update",
        {
            "execution_id": wt.execution_id,
            "wave_task_id": wt.pk,
            "task_id": wt.task_id,
            "wave_id": wt.wave_id,
            "key": wt.key,
            "status": wt.status,
            "previous_status": previous,
            "attempt": wt.attempt,
            "actor": actor,
            "reason": reason,
            "at": iso(now),
        },
    )


def _record(changes: list[tuple[WaveTask, str | None]], actor, reason, now) -> None:
    """Audit rows, event rows, session counters and the signal for applied changes."""
    if not changes:
        return
    audits = [
        TaskStatusAudit(
            wave_task_id=wt.pk,
            task_id=wt.task_id,
            execution_id=wt.execution_id,
            attempt=wt.attempt,
            previous_status=previous,
            new_status=wt.status,
            changed_at=now,
            actor=actor,
            reason=(reason or None) and reason[:500],
        )
        for wt, previous in changes
    ]
    if (pending := _pending()) is not None:
        pending.audits.extend(audits)
    else:
        TaskStatusAudit.objects.bulk_create(audits)
    events_write([_task_event(wt, previous, actor, reason, now) for wt, previous in changes], now)
    running_delta: dict[int, int] = defaultdict(int)
    for wt, previous in changes:
        if wt.status == TaskStatus.RUNNING and previous != TaskStatus.RUNNING:
            running_delta[wt.execution_id] += 1
        elif previous == TaskStatus.RUNNING and wt.status != TaskStatus.RUNNING:
            running_delta[wt.execution_id] -= 1
    for execution_id, delta in running_delta.items():
        if delta:
            _session_count(execution_id, now, tasks=delta)
    task_status_changed.send(
        sender=WaveTask,
        changes=[
            StatusChange(wt.pk, wt.task_id, wt.execution_id, wt.wave_id, previous, wt.status)
            for wt, previous in changes
        ],
    )


def wave_tasks_create(
    rows: list[WaveTask], *, actor: str | None = None, reason: str | None = None
) -> list[WaveTask]:
    """Insert wave tasks; their first status is a change from nothing, audited like any other."""
    now = timezone.now()
    with transaction.atomic():
        created = WaveTask.objects.bulk_create(rows)
        _record([(wt, None) for wt in created], actor, reason, now)
    return created


def transition(
    wave_tasks: WaveTask | Iterable[WaveTask],
    new_status: str,
    *,
    allowed_from: Iterable[str] | None = None,
    actor: str | None = None,
    reason: str | None = None,
    now: datetime | None = None,
    own_fields: Iterable[str] = (),
    **fields,
) -> list[WaveTask]:
    """Move wave tasks to `new_status`, setting `fields` too, and record each change.

    `own_fields` names fields each wave task carries its own value of (already set on the
    objects, e.g. `outputs`): they are written with one bulk UPDATE for the batch.
    The current status is read under lock inside the transaction: a task whose status is
    not in `allowed_from` (when given) is left alone, so two processes racing on one task
    never both win. Returns the wave tasks that changed, updated in memory.
    """
    own_fields = list(own_fields)
    items = [wave_tasks] if isinstance(wave_tasks, WaveTask) else list(wave_tasks)
    if not items:
        return []
    now = now or timezone.now()
    if len(items) > CHUNK:  # a list of 70,000 ready steps: keep each IN (...) list bounded
        with transaction.atomic(savepoint=False):
            return [
                wt
                for i in range(0, len(items), CHUNK)
                for wt in transition(
                    items[i : i + CHUNK],
                    new_status,
                    allowed_from=allowed_from,
                    actor=actor,
                    reason=reason,
                    now=now,
                    own_fields=own_fields,
                    **fields,
                )
            ]
    allowed = frozenset(allowed_from) if allowed_from is not None else None
    by_pk = {wt.pk: wt for wt in items}
    with transaction.atomic(savepoint=False):
        current = dict(
            WaveTask.objects.select_for_update()
            .filter(pk__in=by_pk)
            .values_list("pk", "status")
            .order_by("pk")
        )
        changes: list[tuple[WaveTask, str]] = []
        for pk, status in current.items():
            if allowed is not None and status not in allowed:
                continue
            changes.append((by_pk[pk], status))
        if not changes:
            return []
        for wt, _ in changes:
            wt.status = new_status
            for name, value in fields.items():
                setattr(wt, name, value)
        _update_grouped(WaveTask, [wt for wt, _ in changes], own_fields, status=new_status, **fields)
        _record(changes, actor, reason, now)
    return [wt for wt, _ in changes]


def _update_grouped(model, objs: list, own_fields: Iterable[str], **common) -> None:
    """UPDATE objects that each carry their own values of `own_fields`: one plain UPDATE per
    distinct set of values (a batch mostly shares them: exit code 0, the same outputs),
    cheaper than bulk_update's CASE per row."""
    groups: dict[str, tuple[dict, list[int]]] = {}
    for obj in objs:
        values = {name: getattr(obj, name) for name in own_fields}
        key = json.dumps(values, sort_keys=True, default=str)
        groups.setdefault(key, (values, []))[1].append(obj.pk)
    for values, pks in groups.values():
        model.objects.filter(pk__in=pks).update(**common, **values)


# --- runs and sessions ---------------------------------------------------------------------


def run_update(run: ExecutionRun, *, now: datetime | None = None, **fields) -> None:
    """Set fields of a run and publish a run.update event in the same transaction."""
    now = now or timezone.now()
    with transaction.atomic(savepoint=False):
        ExecutionRun.objects.filter(pk=run.pk).update(**fields)
        for name, value in fields.items():
            setattr(run, name, value)
        events_write([(run.pk, "run.update", run_payload(run))], now)


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
        "peak_concurrency": run.peak_concurrency,
        "cancel_requested": run.cancel_requested_at is not None,
    }


def _session_lock() -> None:
    """Serialise session joins and leaves across processes.

    SQLite: every transaction is BEGIN IMMEDIATE (see config/env.py), which already holds
    the database write lock. PostgreSQL: a transaction-scoped advisory lock.
    """
    from django.db import connection

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [0x7469646577])


def session_join(run: ExecutionRun, now: datetime) -> ConcurrentExecutionSession:
    """Join the active session if another run is running, else open a new one."""
    with transaction.atomic():
        _session_lock()
        session = (
            ConcurrentExecutionSession.objects.filter(
                status=SessionStatus.ACTIVE, runs__status=RunStatus.RUNNING
            )
            .exclude(runs__pk=run.pk)
            .order_by("-started_at")
            .first()
        )
        if session is None:
            session = ConcurrentExecutionSession.objects.create(started_at=now)
        ConcurrentExecutionSession.objects.filter(pk=session.pk).update(
            execution_count=F("execution_count") + 1
        )
        run.session = session
        ExecutionRun.objects.filter(pk=run.pk).update(session=session)
        _session_of_run[run.pk] = session.pk
    return session


def session_count(session_id: int, *, waves: int = 0, tasks: int = 0, agents: int = 0) -> None:
    """Add to a session's totals (waves, tasks, agents started)."""
    ConcurrentExecutionSession.objects.filter(pk=session_id).update(
        total_wave_count=F("total_wave_count") + waves,
        total_task_count=F("total_task_count") + tasks,
        total_agent_count=F("total_agent_count") + agents,
    )


_session_of_run: dict[int, int] = {}


def _session_id(execution_id: int) -> int | None:
    """A run's session never changes once joined: remember it instead of asking each time."""
    session_id = _session_of_run.get(execution_id)
    if session_id is None:
        session_id = ExecutionRun.objects.filter(pk=execution_id).values_list("session_id", flat=True).first()
        if session_id:
            _session_of_run[execution_id] = session_id
    return session_id


def _session_count(
    execution_id: int, now: datetime, *, tasks: int = 0, agents: int = 0, started: int = 0
) -> None:
    """Move the running counters of the run's session (and count agents started)."""
    session_id = _session_id(execution_id)
    if not session_id:
        return
    if (pending := _pending()) is not None:
        pending.counts[session_id].append((now, tasks, agents, started))
    else:
        _session_update(
            session_id, tasks=tasks, agents=agents, tasks_high=tasks, agents_high=agents, started=started
        )


def _session_update(
    session_id: int, *, tasks: int, agents: int, tasks_high: int, agents_high: int, started: int
) -> None:
    """One UPDATE that moves the running counters by `tasks` and `agents` and keeps exact
    peaks: `*_high` is the highest the counter rose on the way (a batch may finish some
    tasks before it starts others). The right-hand sides see the row as it was before this
    statement, under the row lock, so the peak is exact whichever process runs it."""
    ConcurrentExecutionSession.objects.filter(pk=session_id).update(
        running_tasks=F("running_tasks") + tasks,
        running_agents=F("running_agents") + agents,
        total_agent_count=F("total_agent_count") + started,
        peak_concurrent_tasks=Greatest(F("peak_concurrent_tasks"), F("running_tasks") + tasks_high),
        peak_concurrent_agents=Greatest(F("peak_concurrent_agents"), F("running_agents") + agents_high),
    )


def session_leave(run: ExecutionRun, now: datetime) -> None:
    """Close the run's session when no other run of it is still running."""
    if not run.session_id:
        return
    with transaction.atomic():
        _session_lock()
        others = ExecutionRun.objects.filter(
            session_id=run.session_id, status__in=[RunStatus.RUNNING, RunStatus.PENDING]
        )
        if not others.exclude(pk=run.pk).exists():
            failed = ExecutionRun.objects.filter(session_id=run.session_id, status=RunStatus.FAILED).exists()
            ConcurrentExecutionSession.objects.filter(pk=run.session_id, status=SessionStatus.ACTIVE).update(
                status=SessionStatus.FAILED if failed else SessionStatus.COMPLETED, completed_at=now
            )


# --- waves and agents -------------------------------------------------------------------------


def wave_update(wave: ParallelExecutionWave, *, now: datetime | None = None, **fields) -> None:
    now = now or timezone.now()
    with transaction.atomic(savepoint=False):
        ParallelExecutionWave.objects.filter(pk=wave.pk).update(**fields)
        for name, value in fields.items():
            setattr(wave, name, value)
        events_write(
            [
                (
                    wave.execution_id,
                    "wave.update",
                    {
                        "execution_id": wave.execution_id,
                        "wave_id": wave.pk,
                        "wave_number": wave.wave_number,
                        "status": wave.status,
                        "started_at": iso(wave.started_at),
                        "completed_at": iso(wave.completed_at),
                    },
                )
            ],
            now,
        )
        wave_changed.send(sender=ParallelExecutionWave, wave=wave)


def _agent_event(agent: BuildAgentInstance) -> tuple:
    return (
        agent.execution_id,
        "agent.update",
        {
            "execution_id": agent.execution_id,
            "agent_id": agent.pk,
            "instance_id": agent.instance_id,
            "wave_id": agent.wave_id,
            "wave_task_id": agent.wave_task_id,
            "task_id": agent.task_id,
            "attempt": agent.attempt,
            "status": agent.status,
            "hostname": agent.hostname,
            "pid": agent.pid,
            "started_at": iso(agent.started_at),
            "completed_at": iso(agent.completed_at),
            "exit_code": agent.exit_code,
        },
    )


def agents_start(agents: list[BuildAgentInstance], now: datetime) -> list[BuildAgentInstance]:
    """Insert running agents (one per attempt) and count them in the session."""
    if not agents:
        return []
    with transaction.atomic(savepoint=False):
        created = BuildAgentInstance.objects.bulk_create(agents)
        events_write([_agent_event(a) for a in created], now)
        per_run: dict[int, int] = defaultdict(int)
        for agent in created:
            per_run[agent.execution_id] += 1
            agent_changed.send(sender=BuildAgentInstance, agent=agent, created=True)
        for execution_id, count in per_run.items():
            _session_count(execution_id, now, agents=count, started=count)
    return created


def agent_finish(
    agent: BuildAgentInstance, status: str, now: datetime, *, exit_code: int | None = None
) -> bool:
    """Close a running agent. Returns False when it was already closed (e.g. marked lost)."""
    return bool(agents_finish([(agent, status, exit_code)], now))


def agents_finish(items: list[tuple[BuildAgentInstance, str, int | None]], now: datetime) -> list:
    """Close running agents (agent, status, exit code) in one UPDATE; returns those closed.
    An agent already closed elsewhere (e.g. marked lost) is left as it is."""
    if not items:
        return []
    with transaction.atomic(savepoint=False):
        running = set(
            BuildAgentInstance.objects.select_for_update()
            .filter(pk__in=[a.pk for a, _, _ in items], status=AgentStatus.RUNNING)
            .values_list("pk", flat=True)
        )
        closed = []
        for agent, status, exit_code in items:
            if agent.pk in running:
                agent.status, agent.completed_at, agent.exit_code, agent.last_heartbeat = (
                    status,
                    now,
                    exit_code,
                    now,
                )
                closed.append(agent)
        if not closed:
            return []
        _update_grouped(
            BuildAgentInstance, closed, ["status", "exit_code"], completed_at=now, last_heartbeat=now
        )
        events_write([_agent_event(a) for a in closed], now)
        per_run: dict[int, int] = defaultdict(int)
        for agent in closed:
            per_run[agent.execution_id] += 1
            agent_changed.send(sender=BuildAgentInstance, agent=agent, created=False)
        for execution_id, count in per_run.items():
            _session_count(execution_id, now, agents=-count)
    return closed


def agents_heartbeat(agent_ids: Iterable[int], run: ExecutionRun, now: datetime) -> None:
    """One UPDATE for every running agent of the run, and the executor's own heartbeat."""
    ids = list(agent_ids)
    with transaction.atomic(savepoint=False):
        if ids:
            BuildAgentInstance.objects.filter(pk__in=ids, status=AgentStatus.RUNNING).update(
                last_heartbeat=now
            )
        ExecutionRun.objects.filter(pk=run.pk).update(executor_heartbeat=now)


def executor_identity() -> tuple[str, int]:
    return socket.gethostname(), os.getpid()


# --- requests from anywhere: cancel and approve ---------------------------------------------


def run_request_cancel(run: ExecutionRun, *, actor: str = "") -> bool:
    """Ask the executor that owns the run to cancel it. Returns False if the run had ended.

    A run whose executor is gone (no heartbeat for a while) is closed here directly.
    """
    now = timezone.now()
    with transaction.atomic():
        updated = ExecutionRun.objects.filter(
            pk=run.pk, status__in=[RunStatus.PENDING, RunStatus.RUNNING], cancel_requested_at__isnull=True
        ).update(cancel_requested_at=now, cancel_requested_by=actor[:150])
        if not updated:
            run.refresh_from_db()
            return run.status not in RunStatus.terminal()
        run.refresh_from_db()
        events_write([(run.pk, "run.update", run_payload(run))], now)
    if executor_is_gone(run, now):
        run_close_abandoned(run, status=RunStatus.CANCELLED, reason="cancelled", actor=actor or None)
    return True


def executor_is_gone(run: ExecutionRun, now: datetime) -> bool:
    """True when the run's executor has stopped heartbeating (or its pid is gone here)."""
    if run.status not in (RunStatus.RUNNING, RunStatus.PENDING):
        return False
    stale = timedelta(seconds=settings.TIDEWATCH["STALE_AFTER_SECONDS"])
    last = run.executor_heartbeat or run.started_at or run.created_at
    if last and now - last > stale:
        return True
    if run.executor_pid and run.executor_hostname == socket.gethostname():
        return not _pid_alive(run.executor_pid)
    return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our own exited child not yet reaped) is not alive either.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def run_close_abandoned(run: ExecutionRun, *, status: str, reason: str, actor: str | None = None) -> None:
    """Close a run whose executor died: its running agents are lost, unfinished tasks end
    as `lost` (running) or `cancelled`/left for resume, and the run and session close."""
    now = timezone.now()
    with transaction.atomic():
        locked = ExecutionRun.objects.select_for_update().get(pk=run.pk)
        if locked.status in RunStatus.terminal():
            run.refresh_from_db()
            return
        for agent in BuildAgentInstance.objects.filter(execution=run, status=AgentStatus.RUNNING):
            agent_finish(agent, AgentStatus.LOST, now)
        unfinished = list(WaveTask.objects.filter(execution=run).exclude(status__in=TaskStatus.terminal()))
        running = [wt for wt in unfinished if wt.status == TaskStatus.RUNNING]
        transition(
            running,
            TaskStatus.LOST,
            actor=actor,
            reason=f"executor lost ({reason})",
            now=now,
            completed_at=now,
        )
        if status == RunStatus.CANCELLED:
            # Gates waiting for approval keep waiting on a failed run (a resume carries them),
            # but a cancel ends everything.
            others = [wt for wt in unfinished if wt.status != TaskStatus.RUNNING]
            transition(others, TaskStatus.CANCELLED, actor=actor, reason=reason, now=now, completed_at=now)
        for wave in ParallelExecutionWave.objects.filter(execution=run, status__in=[WaveStatus.RUNNING]):
            wave_update(
                wave,
                status=WaveStatus.CANCELLED if status == RunStatus.CANCELLED else WaveStatus.FAILED,
                completed_at=now,
                now=now,
            )
        run_update(run, status=status, completed_at=now, error=reason, now=now)
    session_leave(run, now)


def reap_abandoned_runs() -> list[int]:
    """Close every running run whose executor is gone; returns their ids."""
    now = timezone.now()
    reaped = []
    for run in ExecutionRun.objects.filter(status__in=[RunStatus.RUNNING, RunStatus.PENDING]):
        if executor_is_gone(run, now):
            run_close_abandoned(
                run, status=RunStatus.FAILED, reason="executor stopped without closing the run"
            )
            reaped.append(run.pk)
    return reaped


def step_decide(run: ExecutionRun, key: str, *, approve: bool, actor: str) -> WaveTask:
    """Approve or reject an approval step of a run (command line, admin, API).

    A step already waiting moves on at once (approved -> queued, rejected -> failed); a
    step the run has not reached yet keeps the decision and acts on it when it gets there.
    """
    decision = "approved" if approve else "rejected"
    now = timezone.now()
    with transaction.atomic():
        wt = (
            WaveTask.objects.select_for_update().select_related("task").filter(execution=run, key=key).first()
        )
        if wt is None:
            raise ServiceError(f"run {run.pk} has no step {key!r}")
        if not wt.task.approval:
            raise ServiceError(f"step {key!r} of run {run.pk} is not an approval step")
        if wt.approval_decision:
            raise ServiceError(
                f"step {key!r} of run {run.pk} was already {wt.approval_decision} by {wt.approved_by or 'someone'}"
            )
        if wt.status in TaskStatus.terminal() or wt.status == TaskStatus.RUNNING:
            raise ServiceError(f"step {key!r} of run {run.pk} is {wt.status}; there is nothing to approve")
        WaveTask.objects.filter(pk=wt.pk).update(
            approval_decision=decision, approved_at=now, approved_by=actor[:150]
        )
        wt.approval_decision, wt.approved_at, wt.approved_by = decision, now, actor
        if wt.status == TaskStatus.WAITING_APPROVAL:
            if approve:
                transition(wt, TaskStatus.QUEUED, actor=actor, reason="approved", now=now)
            else:
                transition(
                    wt,
                    TaskStatus.FAILED,
                    actor=actor,
                    reason="rejected",
                    now=now,
                    completed_at=now,
                    error=f"rejected by {actor}",
                )
        else:
            events_write([_task_event(wt, wt.status, actor, f"{decision} in advance", now)], now)
    return wt
