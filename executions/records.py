"""The records every change leaves: audit rows, event-log rows and session counter moves.

Written in the transaction of the change they record. Inside `batch()` (the executor wraps
each turn of its loop in one) they are gathered and written when the block ends, ordered by
time: one write for the audit, one for the events and one UPDATE per session, instead of
one each per change. Audit and event rows go as plain tuples (`AUDIT_COLUMNS`, `EVENT_COLUMNS`),
written with COPY on PostgreSQL and with `bulk_create` elsewhere.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from collections.abc import Iterable
from contextlib import contextmanager
from datetime import datetime

from django.db import connection, transaction
from django.db.models import F, JSONField
from django.db.models.functions import Greatest

from executions.models import ConcurrentExecutionSession, Event, ExecutionRun, TaskStatusAudit


def iso(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with a Z, as every payload and API shows times."""
    return value.isoformat().replace("+00:00", "Z") if value else None


AUDIT_COLUMNS = (
    "wave_task_id", "task_id", "execution_id", "attempt", "previous_status", "new_status", "changed_at", "actor",
    "reason",
)  # fmt: skip
EVENT_COLUMNS = ("execution_id", "type", "payload", "created_at")
AUDIT_TIME, EVENT_TIME = AUDIT_COLUMNS.index("changed_at"), EVENT_COLUMNS.index("created_at")


def _insert(model, columns: tuple[str, ...], rows: list[tuple]) -> None:
    """Append rows (tuples in the order of `columns`) to the model's table."""
    (_copy if connection.vendor == "postgresql" else _bulk_create)(model, columns, rows)


def _bulk_create(model, columns: tuple[str, ...], rows: list[tuple]) -> None:
    model.objects.bulk_create([model(**dict(zip(columns, row, strict=True))) for row in rows])


def _copy(model, columns: tuple[str, ...], rows: list[tuple]) -> None:
    """PostgreSQL's COPY: a fraction of a many-row INSERT's cost to build and parse."""
    json_at = [i for i, name in enumerate(columns) if isinstance(model._meta.get_field(name), JSONField)]
    sql = f"COPY {connection.ops.quote_name(model._meta.db_table)} ({', '.join(columns)}) FROM STDIN"
    with connection.cursor() as cursor, cursor.cursor.copy(sql) as copy:
        for row in rows:
            if json_at:
                row = list(row)
                for i in json_at:
                    row[i] = json.dumps(row[i])  # as JSONField stores it
            copy.write_row(row)


class _Batch:
    """What `batch()` gathers. Written in the order of their times, not of the calls: the
    executor starts the steps a success unblocks before it records that success (so they
    start sooner), and the audit, the event log and the session peaks still read in causal
    order."""

    def __init__(self):
        self.audits: list[tuple] = []  # AUDIT_COLUMNS
        self.events: list[tuple] = []  # EVENT_COLUMNS
        self.counts: dict[int, list[tuple]] = defaultdict(list)  # session -> moves

    def write(self) -> None:
        if self.audits:
            _insert(TaskStatusAudit, AUDIT_COLUMNS, sorted(self.audits, key=lambda a: a[AUDIT_TIME]))
        if self.events:
            _insert(Event, EVENT_COLUMNS, sorted(self.events, key=lambda e: e[EVENT_TIME]))
        for session_id, moves in self.counts.items():
            # At equal times a finish comes before a start: the peak is not inflated.
            moves.sort(key=lambda m: (m[0], m[1] + m[2] > 0))
            tasks = agents = tasks_high = agents_high = started = 0
            for _, t, a, s in moves:
                tasks, agents, started = tasks + t, agents + a, started + s
                tasks_high, agents_high = max(tasks_high, tasks), max(agents_high, agents)
            _session_update(
                session_id, tasks=tasks, agents=agents, tasks_high=tasks_high, agents_high=agents_high,
                started=started,
            )  # fmt: skip


_local = threading.local()


def _pending() -> _Batch | None:
    return getattr(_local, "batch", None)


@contextmanager
def batch():
    """Inside a transaction: gather the audit rows, event-log rows and session counter
    moves of many changes and write them when the block ends, ordered by time. Status
    updates themselves are not deferred."""
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


def batch_latest() -> datetime | None:
    """The latest time among the events the current batch has gathered (None outside a batch,
    or before any): an event that follows them (observability's stats.update) takes it, so the
    batch, written in time order, keeps it after the changes it reports."""
    pending = _pending()
    return max((e[EVENT_TIME] for e in pending.events), default=None) if pending is not None else None


def audits_write(rows: Iterable[tuple]) -> None:
    """Append rows, tuples in the order of `AUDIT_COLUMNS`, to the task status audit."""
    if (pending := _pending()) is not None:
        pending.audits.extend(rows)
    elif rows := list(rows):
        _insert(TaskStatusAudit, AUDIT_COLUMNS, rows)


def events_write(rows: Iterable[tuple[int | None, str, dict]], now: datetime) -> None:
    """Append (execution_id, type, payload) rows to the event log."""
    _events_append([(ex, type_, payload, now) for ex, type_, payload in rows])


def events_add(events: list[Event]) -> None:
    """Append unsaved Event objects to the event log."""
    _events_append([(e.execution_id, e.type, e.payload, e.created_at) for e in events])


def _events_append(rows: list[tuple]) -> None:
    if (pending := _pending()) is not None:
        pending.events.extend(rows)
    elif rows:
        _insert(Event, EVENT_COLUMNS, rows)


# --- the running counters of sessions ------------------------------------------------------------

_session_of_run: dict[int, int] = {}


def session_remember(execution_id: int, session_id: int) -> None:
    _session_of_run[execution_id] = session_id


def _session_id(execution_id: int) -> int | None:
    """A run's session never changes once joined: remember it instead of asking each time."""
    session_id = _session_of_run.get(execution_id)
    if session_id is None:
        session_id = ExecutionRun.objects.filter(pk=execution_id).values_list("session_id", flat=True).first()
        if session_id:
            _session_of_run[execution_id] = session_id
    return session_id


def session_move(execution_id: int, now: datetime, *, tasks: int = 0, agents: int = 0, started: int = 0):
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
