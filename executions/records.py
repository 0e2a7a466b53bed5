"""The records every change leaves: audit rows, event-log rows and session counter moves.

Written in the transaction of the change they record. Inside `batch()` (the executor wraps
each turn of its loop in one) they are gathered and written when the block ends, ordered by
time: one write for the audit, one for the events and one UPDATE per session, instead of
one each per change. Audit and event rows go as plain tuples (`AUDIT_COLUMNS`, `EVENT_COLUMNS`),
or as a `Block` (the rows of one change set, at one time, that can render their own COPY
text), written with COPY on PostgreSQL and with `bulk_create` elsewhere.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
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


class Block:
    """Rows of one change set, all at the time `at`: `rows()` gives them as tuples in the order
    of the table's columns, `text()` the same rows as COPY's text format (or None when it
    cannot render them: they are then written from `rows()`). Rendering the rows of a change
    set at once costs a fraction of formatting each value of each row. `copy_text()` renders
    the text once."""

    __slots__ = ("at", "rows", "text", "_text")

    def __init__(self, at: datetime, rows: Callable[[], list[tuple]], text: Callable[[], str | None]):
        self.at, self.rows, self.text = at, rows, text

    def copy_text(self) -> str | None:
        if not hasattr(self, "_text"):
            self._text = self.text()
        return self._text


def copy_text(value: str | None) -> str:
    """A text value as a field of COPY's text format (None is NULL)."""
    if value is None:
        return "\\N"
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


def copy_time(value: datetime) -> str:
    """A datetime as a field of COPY's text format: the text the driver sends for it."""
    return str(value)


def copy_field(value, as_json: bool = False) -> str:
    """Any value of the audit's and the event log's columns as a field of COPY's text format,
    the text the driver sends for it (`as_json`: a JSON column's value, as JSONField stores it)."""
    if as_json:
        return copy_text(json.dumps(value))
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        return float.__repr__(value)
    if isinstance(value, datetime):
        return copy_time(value)
    return copy_text(str(value))


def _insert(model, columns: tuple[str, ...], rows: list, meanwhile: Callable[[], None] | None = None) -> None:
    """Append rows (tuples in the order of `columns`, or `Block`s of them) to the model's table.
    `meanwhile` is called once, while the database takes the rows (COPY) or after it took them."""
    (_copy if connection.vendor == "postgresql" else _bulk_create)(model, columns, rows, meanwhile)


def _tuples(rows: list) -> Iterator[tuple]:
    for row in rows:
        if isinstance(row, Block):
            yield from row.rows()
        else:
            yield row


def _bulk_create(
    model, columns: tuple[str, ...], rows: list, meanwhile: Callable[[], None] | None = None
) -> None:
    model.objects.bulk_create([model(**dict(zip(columns, row, strict=True))) for row in _tuples(rows)])
    if meanwhile is not None:
        meanwhile()


def _copy(model, columns: tuple[str, ...], rows: list, meanwhile: Callable[[], None] | None = None) -> None:
    """PostgreSQL's COPY: a fraction of a many-row INSERT's cost to build and parse. Every row
    goes as text, a block's as it renders it, a tuple's field by field. The server takes the
    rows as they arrive: `meanwhile`, called before the end of the COPY waits for it, runs on
    the client at the same time."""
    as_json = [isinstance(model._meta.get_field(name), JSONField) for name in columns]
    sql = f"COPY {connection.ops.quote_name(model._meta.db_table)} ({', '.join(columns)}) FROM STDIN"
    with connection.cursor() as cursor, cursor.cursor.copy(sql) as copy:
        for item in rows:
            if isinstance(item, Block):
                text = item.copy_text()
                if text is None:
                    text = _copy_lines(item.rows(), as_json)
            else:
                text = _copy_lines((item,), as_json)
            copy.write(text)
        if meanwhile is not None:
            meanwhile()


def _copy_lines(rows: Iterable[tuple], as_json: list[bool]) -> str:
    return "".join(
        "\t".join([copy_field(value, j) for value, j in zip(row, as_json, strict=True)]) + "\n"
        for row in rows
    )


def _time_of(index: int):
    """The sort key of rows by their time: a block's, or the tuple's field at `index`."""
    return lambda row: row.at if isinstance(row, Block) else row[index]


class _Batch:
    """What `batch()` gathers. Written in the order of their times, not of the calls: the
    executor starts the steps a success unblocks before it records that success (so they
    start sooner), and the audit, the event log and the session peaks still read in causal
    order."""

    def __init__(self):
        self.audits: list = []  # tuples of AUDIT_COLUMNS and Blocks of them
        self.events: list = []  # tuples of EVENT_COLUMNS and Blocks of them
        self.counts: dict[int, list[tuple]] = defaultdict(list)  # session -> moves

    def write(self) -> None:
        if self.audits:
            # Sorted stably: the rows of a block share its time and keep their order.
            _insert(TaskStatusAudit, AUDIT_COLUMNS, sorted(self.audits, key=_time_of(AUDIT_TIME)))
        if self.events:
            _insert(Event, EVENT_COLUMNS, sorted(self.events, key=_time_of(EVENT_TIME)))
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
    if pending is None:
        return None
    return max(map(_time_of(EVENT_TIME), pending.events), default=None)


def audits_write(rows: Iterable[tuple] | Block, meanwhile: Callable[[], None] | None = None) -> None:
    """Append rows, tuples in the order of `AUDIT_COLUMNS` (or a `Block` of them), to the task
    status audit. `meanwhile` is called once: while the database takes the rows, or after."""
    _append(TaskStatusAudit, AUDIT_COLUMNS, "audits", rows, meanwhile)


def events_write(rows: Iterable[tuple[int | None, str, dict]], now: datetime) -> None:
    """Append (execution_id, type, payload) rows to the event log."""
    _append(Event, EVENT_COLUMNS, "events", [(ex, type_, payload, now) for ex, type_, payload in rows])


def events_add(events: list[Event]) -> None:
    """Append unsaved Event objects to the event log."""
    _append(
        Event, EVENT_COLUMNS, "events", [(e.execution_id, e.type, e.payload, e.created_at) for e in events]
    )


def events_block(block: Block, meanwhile: Callable[[], None] | None = None) -> None:
    """Append a `Block` of rows in the order of `EVENT_COLUMNS` to the event log. `meanwhile`
    is called once: while the database takes the rows, or after."""
    _append(Event, EVENT_COLUMNS, "events", block, meanwhile)


def _append(
    model,
    columns: tuple[str, ...],
    kind: str,
    rows: Iterable[tuple] | Block,
    meanwhile: Callable[[], None] | None = None,
) -> None:
    """Write the rows now, or gather them into the current batch."""
    pending = _pending()
    if isinstance(rows, Block):
        rows = [rows]
    elif pending is None:
        rows = list(rows)
    if pending is not None:
        getattr(pending, kind).extend(rows)
    elif rows:
        _insert(model, columns, rows, meanwhile)
        return
    if meanwhile is not None:
        meanwhile()


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
