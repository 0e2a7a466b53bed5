"""Concurrent execution sessions: runs that overlap in time share one.

A run joins the active session when another run of it is running, else opens a new one;
the session closes with its last run. Joins and leaves are serialised across processes.
The running counters and the peaks move with each status change (executions.records), in
the order executors commit. Across executors that order can differ from the order of the
changes' own times, so when the session closes its peaks are set from the records themselves:
the most agents whose recorded lifetimes overlap, and the most tasks running at once by the
audit.
"""

from __future__ import annotations

from datetime import datetime

from django.db import connection, transaction
from django.db.models import F

from executions.models import (
    BuildAgentInstance,
    ConcurrentExecutionSession,
    ExecutionRun,
    RunStatus,
    SessionStatus,
    TaskStatus,
    TaskStatusAudit,
)
from executions.records import session_remember


def _session_lock() -> None:
    """SQLite: every transaction is BEGIN IMMEDIATE (config/env.py), which already holds the
    database write lock. PostgreSQL: a transaction-scoped advisory lock."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [0x7469646577])


def session_join(run: ExecutionRun, now: datetime) -> ConcurrentExecutionSession:
    """Join the active session if another run is running, else open a new one. Callers reap
    the runs of dead executors first (ownership.reap_abandoned_runs), so a session holds
    only live work."""
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
        session_remember(run.pk, session.pk)
    return session


def session_count(session_id: int, *, waves: int = 0, tasks: int = 0, agents: int = 0) -> None:
    """Add to a session's totals (waves, tasks, agents started)."""
    ConcurrentExecutionSession.objects.filter(pk=session_id).update(
        total_wave_count=F("total_wave_count") + waves,
        total_task_count=F("total_task_count") + tasks,
        total_agent_count=F("total_agent_count") + agents,
    )


def session_leave(run: ExecutionRun, now: datetime) -> None:
    """Close the run's session when no other run of it is still running."""
    if not run.session_id:
        return
    closed = 0
    with transaction.atomic():
        _session_lock()
        others = ExecutionRun.objects.filter(
            session_id=run.session_id, status__in=[RunStatus.RUNNING, RunStatus.PENDING]
        )
        if not others.exclude(pk=run.pk).exists():
            failed = ExecutionRun.objects.filter(session_id=run.session_id, status=RunStatus.FAILED).exists()
            closed = ConcurrentExecutionSession.objects.filter(
                pk=run.session_id, status=SessionStatus.ACTIVE
            ).update(status=SessionStatus.FAILED if failed else SessionStatus.COMPLETED, completed_at=now)
    if closed:  # outside the lock: nothing joins a closed session
        session_settle(run.session_id)


def session_settle(session_id: int) -> None:
    """Set a session's peaks from its runs' records."""
    runs = f"SELECT id FROM {ExecutionRun._meta.db_table} WHERE session_id = %s"
    ConcurrentExecutionSession.objects.filter(pk=session_id).update(
        peak_concurrent_agents=_agents_peak(runs, [session_id]),
        peak_concurrent_tasks=_tasks_peak(runs, [session_id]),
    )


def run_agents_peak(run_id: int) -> int:
    """The most agents of one run whose recorded lifetimes overlap."""
    return _agents_peak("%s", [run_id])


def _agents_peak(runs: str, params: list) -> int:
    """The most agents of the runs `runs` (SQL selecting run ids) whose recorded lifetimes
    overlap. At equal times an end comes before a start, as the live counters order them."""
    agents = BuildAgentInstance._meta.db_table
    return _highest_sum(
        f"SELECT started_at AS t, 1 AS d FROM {agents} WHERE execution_id IN ({runs}) UNION ALL "
        f"SELECT completed_at, -1 FROM {agents} WHERE execution_id IN ({runs}) AND completed_at IS NOT NULL",
        params * 2,
    )


def _tasks_peak(runs: str, params: list) -> int:
    """The most tasks of the runs `runs` running at once, by the audit."""
    return _highest_sum(
        f"SELECT changed_at AS t, CASE WHEN new_status = %s THEN 1 ELSE -1 END AS d FROM "
        f"{TaskStatusAudit._meta.db_table} WHERE execution_id IN ({runs}) "
        "AND (new_status = %s) <> (COALESCE(previous_status, '') = %s)",
        [TaskStatus.RUNNING, *params, TaskStatus.RUNNING, TaskStatus.RUNNING],
    )


def _highest_sum(moves: str, params: list) -> int:
    """The highest running sum of `d` over the rows (t, d) of `moves`, in order of t, then d."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT COALESCE(MAX(n), 0) FROM (SELECT SUM(d) OVER (ORDER BY t, d ROWS UNBOUNDED PRECEDING) AS n"
            f" FROM ({moves}) AS moves) AS sums",
            params,
        )
        return max(0, cursor.fetchone()[0])
