"""Concurrent execution sessions: runs that overlap in time share one.

A run joins the active session when another run of it is running, else opens a new one;
the session closes with its last run. Joins and leaves are serialised across processes.
The running counters and exact peaks move with each status change (executions.records).
"""

from __future__ import annotations

from datetime import datetime

from django.db import connection, transaction
from django.db.models import F

from executions.models import ConcurrentExecutionSession, ExecutionRun, RunStatus, SessionStatus
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
