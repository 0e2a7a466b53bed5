"""The one place a task in a run changes status (and waves and agents theirs).

`transition()` checks every move against `ALLOWED`, moves only the rows that are in the
status the caller expects (read under a row lock, so two processes racing on one task never
both win), and writes for each change its `task_status_audit` row and its event-log row in
the same transaction. A row found in another status is not touched: it is reported back
(`Moved.lost`) for the caller to act on, never overwritten. `wave_tasks_create()` writes
the first status of new rows the same way.

Bulk moves stay cheap per row: the rows are locked and updated with one statement each
(on PostgreSQL the ids go as the text of one array parameter, and rows with values of their
own as arrays too), the change set's audit and event rows are rendered once, as COPY text on
PostgreSQL (`_audit_text`, `_event_text`: the same rows as their tuples), and written by
`records`. wave_tasks leaves room in its pages for the new version of a row (migration 0006):
no index holds the status, so a status change does not touch the indexes.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from json.encoder import encode_basestring_ascii

from django.db import connection, transaction
from django.db.models.expressions import RawSQL
from django.utils import timezone

from executions.capture import StatusChange
from executions.models import (
    AgentStatus,
    BuildAgentInstance,
    Event,
    ParallelExecutionWave,
    TaskStatus,
    WaveTask,
)
from executions.records import (
    Block,
    audits_write,
    copy_text,
    copy_time,
    events_add,
    events_block,
    events_write,
    iso,
    session_move,
)
from executions.signals import agent_changed, task_status_changed, wave_changed

S = TaskStatus
# Rows per IN (...) list: PostgreSQL takes at most 65,535 parameters in one statement.
CHUNK = 10_000

# Every move a task in a run may make. None is "not created yet": a row starts pending, or
# succeeded when a resume carries a success over. Final statuses go nowhere.
ALLOWED: dict[str | None, frozenset[str]] = {
    None: frozenset({S.PENDING, S.SUCCEEDED}),
    S.PENDING: frozenset({S.QUEUED, S.RUNNING, S.WAITING_APPROVAL, S.FAILED, S.SKIPPED, S.CANCELLED}),
    S.QUEUED: frozenset({S.RUNNING, S.FAILED, S.CANCELLED}),
    S.WAITING_APPROVAL: frozenset({S.QUEUED, S.FAILED, S.CANCELLED}),
    # Back to queued: a retry, or the next iteration of a repeat.
    S.RUNNING: frozenset({S.QUEUED, S.SUCCEEDED, S.FAILED, S.CANCELLED, S.LOST}),
}
UNFINISHED = frozenset(ALLOWED) - {None}


class IllegalTransition(ValueError):
    """A move the table does not allow: a bug in the caller, raised before any write."""


class Moved(list):
    """The wave tasks that changed (updated in memory); `lost` holds (wave task, status
    found) for those that were not in an expected status, left as they were."""

    lost: list[tuple[WaveTask, str]]

    def __init__(self, changed=(), lost=()):
        super().__init__(changed)
        self.lost = list(lost)


def task_event(wt: WaveTask, previous: str | None, actor: str | None, reason: str | None, now: datetime):
    return (
        wt.execution_id,
        "task.update",
        _task_payload(
            (wt.pk, wt.task_id, wt.execution_id, wt.wave_id, wt.key, wt.attempt, previous, wt.status),
            actor,
            reason,
            now,
        ),
    )


def _task_payload(row: tuple, actor: str | None, reason: str | None, now: datetime) -> dict:
    """The payload of a task.update event from a `_snapshot` row (`_event_text` writes the
    same keys in the same order)."""
    pk, task_id, execution_id, wave_id, key, attempt, previous, status = row
    return {
        "execution_id": execution_id,
        "wave_task_id": pk,
        "task_id": task_id,
        "wave_id": wave_id,
        "key": key,
        "status": status,
        "previous_status": previous,
        "attempt": attempt,
        "actor": actor,
        "reason": reason,
        "at": iso(now),
    }


def _snapshot(changes: list[tuple[WaveTask, str | None]]) -> list[tuple]:
    """What the records of each change need, as the wave task is now: the rows may be written
    later (at the end of a `records.batch()`), after further changes to the same objects.
    (`id` is the pk, read without the `pk` property's lookup.)"""
    return [
        (wt.id, wt.task_id, wt.execution_id, wt.wave_id, wt.key, wt.attempt, previous, wt.status)
        for wt, previous in changes
    ]


def _record(changes: list[tuple[WaveTask, str | None]], actor, reason, now) -> None:
    """Audit rows, event rows, session counters and the signal for applied changes."""
    if not changes:
        return
    reason = (reason or None) and reason[:500]
    rows = _snapshot(changes)
    audits = Block(
        now,
        # In the order of records.AUDIT_COLUMNS.
        lambda: [
            (pk, task_id, execution_id, attempt, previous, status, now, actor, reason)
            for pk, task_id, execution_id, _, _, attempt, previous, status in rows
        ],
        lambda: _audit_text(rows, actor, reason, now),
    )
    events = Block(
        now,
        # In the order of records.EVENT_COLUMNS.
        lambda: [(row[2], "task.update", _task_payload(row, actor, reason, now), now) for row in rows],
        lambda: _event_text(rows, actor, reason, now),
    )
    signalled: list[StatusChange] = []
    running_delta: dict[int, int] = defaultdict(int)

    def then() -> None:
        signalled.extend(
            StatusChange(pk, task_id, execution_id, wave_id, previous, status)
            for pk, task_id, execution_id, wave_id, _, _, previous, status in rows
        )
        for change in signalled:
            if delta := (change.new_status == S.RUNNING) - (change.previous_status == S.RUNNING):
                running_delta[change.execution_id] += delta

    # On PostgreSQL the server takes the rows of a COPY while the client goes on: the event
    # rows are rendered while it takes the audit rows, the signal's changes made while it takes
    # the event rows.
    audits_write(audits, meanwhile=events.copy_text if connection.vendor == "postgresql" else None)
    events_block(events, meanwhile=then)
    for execution_id, delta in running_delta.items():
        if delta:
            session_move(execution_id, now, tasks=delta)
    task_status_changed.send(sender=WaveTask, changes=signalled)


# --- the same rows as COPY text -----------------------------------------------------------------
# From the `_snapshot` rows, for PostgreSQL: the rows `_record`'s tuples make, each value as the
# driver would send it, with what a change set shares (statuses, actor, reason, time) rendered
# once. A value that is not an int where one belongs (TypeError, ValueError) leaves the block
# to its tuples.


class _Texts(dict):
    """Each distinct value's text, rendered once."""

    def __init__(self, render):
        super().__init__()
        self.render = render

    def __missing__(self, value):
        text = self[value] = self.render(value)
        return text


def _json_copy(value) -> str:
    """A value as JSON (as json.dumps writes it) in a field of COPY's text format: JSON escapes
    every control character, which leaves the backslash to double."""
    return json.dumps(value).replace("\\", "\\\\")


def _audit_text(rows: list[tuple], actor, reason, now) -> str | None:
    status = _Texts(copy_text)
    tail = f"\t{copy_time(now)}\t{copy_text(actor)}\t{copy_text(reason)}\n"
    try:
        return "".join(
            [
                f"{pk:d}\t{task_id:d}\t{execution_id:d}\t{attempt:d}\t{status[previous]}\t{status[new]}{tail}"
                for pk, task_id, execution_id, _, _, attempt, previous, new in rows
            ]
        )
    except (TypeError, ValueError):
        return None


def _event_text(rows: list[tuple], actor, reason, now) -> str | None:
    status = _Texts(_json_copy)
    tail = (
        f', "actor": {_json_copy(actor)}, "reason": {_json_copy(reason)}, "at": {_json_copy(iso(now))}}}'
        f"\t{copy_time(now)}\n"
    )
    bs, bs2 = "\\", "\\\\"
    try:
        return "".join(
            [
                f'{execution_id:d}\ttask.update\t{{"execution_id": {execution_id:d}, "wave_task_id": {pk:d}, '
                f'"task_id": {task_id:d}, "wave_id": {wave_id:d}, "key": {encode_basestring_ascii(key).replace(bs, bs2)}, '
                f'"status": {status[new]}, "previous_status": {status[previous]}, "attempt": {attempt:d}{tail}'
                for pk, task_id, execution_id, wave_id, key, attempt, previous, new in rows
            ]
        )
    except (TypeError, ValueError):
        return None


def wave_tasks_create(
    rows: list[WaveTask], *, actor: str | None = None, reason: str | None = None, now: datetime | None = None
) -> list[WaveTask]:
    """Insert wave tasks; their first status is a change from nothing, audited like any other."""
    for wt in rows:
        if wt.status not in ALLOWED[None]:
            raise IllegalTransition(f"{wt.key}: a task in a run cannot start as {wt.status}")
    now = now or timezone.now()
    with transaction.atomic(savepoint=False):
        created = WaveTask.objects.bulk_create(rows)
        _record([(wt, None) for wt in created], actor, reason, now)
    return created


def transition(
    wave_tasks: WaveTask | Iterable[WaveTask],
    new_status: str,
    *,
    expected: str | Iterable[str],
    actor: str | None = None,
    reason: str | None = None,
    now: datetime | None = None,
    own_fields: Iterable[str] = (),
    **fields,
) -> Moved:
    """Move the wave tasks that are in an `expected` status to `new_status`, setting `fields`
    too, and record each change.

    `own_fields` names fields each wave task carries its own value of (already set on the
    objects, e.g. `outputs`): see `update_grouped`.
    """
    expected = frozenset([expected] if isinstance(expected, str) else expected)
    for status in expected:
        if new_status not in ALLOWED.get(status, ()):
            raise IllegalTransition(f"a task cannot go from {status} to {new_status}")
    own_fields = list(own_fields)
    items = [wave_tasks] if isinstance(wave_tasks, WaveTask) else list(wave_tasks)
    if not items:
        return Moved()
    now = now or timezone.now()
    moved = Moved()
    with transaction.atomic(savepoint=False):
        # A list of 70,000 ready steps: keep each IN (...) list bounded.
        for i in range(0, len(items), CHUNK):
            chunk = items[i : i + CHUNK]
            by_pk = {wt.pk: wt for wt in chunk}
            changes = []
            for pk, status in _locked(by_pk):
                wt = by_pk[pk]
                if status in expected:
                    changes.append((wt, status))
                else:
                    wt.status = status
                    moved.lost.append((wt, status))
            if not changes:
                continue
            for wt, _ in changes:
                wt.status = new_status
                for name, value in fields.items():
                    setattr(wt, name, value)
            update_grouped(WaveTask, [wt for wt, _ in changes], own_fields, status=new_status, **fields)
            _record(changes, actor, reason, now)
            moved.extend(wt for wt, _ in changes)
    return moved


def update_grouped(model, objs: list, own_fields: Iterable[str], **common) -> None:
    """UPDATE objects that each carry their own values of `own_fields`: on PostgreSQL one
    UPDATE from arrays of the values (`_update_from_arrays`), elsewhere one plain UPDATE per
    distinct set of values (a batch mostly shares them: exit code 0, the same outputs); both
    cheaper than bulk_update's CASE per row."""
    own_fields = list(own_fields)
    if not own_fields:
        model.objects.filter(pk__in=pks_in([obj.pk for obj in objs])).update(**common)
        return
    if connection.vendor == "postgresql" and not any(
        hasattr(v, "resolve_expression") for v in common.values()
    ):
        _update_from_arrays(model, objs, own_fields, common)
    else:
        _update_by_groups(model, objs, own_fields, common)


def _update_by_groups(model, objs: list, own_fields: list[str], common: dict) -> None:
    groups: dict[str, tuple[dict, list[int]]] = {}
    for obj in objs:
        values = {name: getattr(obj, name) for name in own_fields}
        key = json.dumps(values, sort_keys=True, default=str)
        groups.setdefault(key, (values, []))[1].append(obj.pk)
    for values, pks in groups.values():
        model.objects.filter(pk__in=pks_in(pks)).update(**common, **values)


def _update_from_arrays(model, objs: list, own_fields: list[str], common: dict) -> None:
    """One UPDATE ... FROM unnest(ids, values of each own field): however many distinct values
    the rows carry (outputs, errors), one statement. Values are prepared as the ORM's UPDATE
    prepares them, each array cast to its column's type."""
    meta, qn = model._meta, connection.ops.quote_name
    own = [meta.get_field(name) for name in own_fields]
    shared = [(meta.get_field(name), value) for name, value in common.items()]
    columns = ["id", *(f"c{i}" for i in range(len(own)))]
    sets = [f"{qn(f.column)} = %s" for f, _ in shared] + [
        f"{qn(f.column)} = v.c{i}" for i, f in enumerate(own)
    ]
    arrays = ", ".join(["%s::bigint[]", *(f"%s::{f.db_type(connection)}[]" for f in own)])
    sql = (
        f"UPDATE {qn(meta.db_table)} SET {', '.join(sets)} FROM unnest({arrays}) AS v({', '.join(columns)}) "
        f"WHERE {qn(meta.db_table)}.{qn(meta.pk.column)} = v.id"
    )
    params = [f.get_db_prep_save(value, connection) for f, value in shared]
    params.append(_bigint_array(obj.pk for obj in objs))
    params += [[f.get_db_prep_save(getattr(obj, f.attname), connection) for obj in objs] for f in own]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def _locked(pks: Iterable[int]) -> list[tuple[int, str]]:
    """(pk, status) of the wave tasks, read under a row lock taken in pk order (two processes
    moving some of the same rows lock them in the same order)."""
    if connection.vendor != "postgresql":
        return list(
            WaveTask.objects.select_for_update()
            .filter(pk__in=list(pks))
            .values_list("pk", "status")
            .order_by("pk")
        )
    table = connection.ops.quote_name(WaveTask._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id, status FROM {table} WHERE id IN (SELECT unnest(%s::bigint[])) ORDER BY id FOR UPDATE",
            [_bigint_array(pks)],
        )
        return cursor.fetchall()


def pks_in(pks: Iterable[int]):
    """The right side of a `pk__in`: on PostgreSQL one array parameter instead of one parameter
    per id (10,000 ids: a quarter of a second less to build and parse)."""
    if connection.vendor == "postgresql":
        return RawSQL("SELECT unnest(%s::bigint[])", [_bigint_array(pks)])
    return list(pks)


def _bigint_array(pks: Iterable[int]) -> str:
    """Ids as the text of a PostgreSQL bigint[]: one short string to quote, where a list goes
    through the driver's array adaptation value by value."""
    return "{" + ",".join(map(str, map(int, pks))) + "}"


# --- waves and agents ------------------------------------------------------------------------


def wave_update(wave: ParallelExecutionWave, *, now: datetime | None = None, **fields) -> None:
    """Set fields of a wave (its status, times) and write its wave.update event."""
    now = now or timezone.now()
    with transaction.atomic(savepoint=False):
        ParallelExecutionWave.objects.filter(pk=wave.pk).update(**fields)
        for name, value in fields.items():
            setattr(wave, name, value)
        payload = {
            "execution_id": wave.execution_id,
            "wave_id": wave.pk,
            "wave_number": wave.wave_number,
            "status": wave.status,
            "started_at": iso(wave.started_at),
            "completed_at": iso(wave.completed_at),
        }
        events_write([(wave.execution_id, "wave.update", payload)], now)
        wave_changed.send(sender=ParallelExecutionWave, wave=wave)


def _agent_event(agent: BuildAgentInstance, at: datetime) -> Event:
    return Event(
        execution_id=agent.execution_id,
        type="agent.update",
        created_at=at,
        payload={
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


def agents_start(agents: list[BuildAgentInstance]) -> list[BuildAgentInstance]:
    """Insert running agents (one per attempt, each with its own start) and count them in
    the session."""
    if not agents:
        return []
    with transaction.atomic(savepoint=False):
        created = BuildAgentInstance.objects.bulk_create(agents)
        events_add([_agent_event(agent, agent.started_at) for agent in created])
        for agent in created:
            agent_changed.send(sender=BuildAgentInstance, agent=agent, created=True)
            session_move(agent.execution_id, agent.started_at, agents=1, started=1)
    return created


def agents_finish(items: list[tuple[BuildAgentInstance, str, int | None, datetime]]) -> list:
    """Close running agents (agent, status, exit code, when) in one UPDATE; returns those
    closed. An agent already closed elsewhere (e.g. marked lost) is left as it is."""
    if not items:
        return []
    with transaction.atomic(savepoint=False):
        running = set(
            BuildAgentInstance.objects.select_for_update()
            .filter(pk__in=[item[0].pk for item in items], status=AgentStatus.RUNNING)
            .values_list("pk", flat=True)
        )
        closed = []
        for agent, status, exit_code, at in items:
            if agent.pk in running:
                agent.status, agent.exit_code = status, exit_code
                agent.completed_at = agent.last_heartbeat = at
                closed.append(agent)
        if not closed:
            return []
        # Each its own end: one statement run for every agent (executemany), far cheaper
        # to build than bulk_update's CASE per field and row.
        _agents_close_rows(closed)
        events_add([_agent_event(agent, agent.completed_at) for agent in closed])
        for agent in closed:
            agent_changed.send(sender=BuildAgentInstance, agent=agent, created=False)
            session_move(agent.execution_id, agent.completed_at, agents=-1)
    return closed


def _agents_close_rows(agents: list[BuildAgentInstance]) -> None:
    table = connection.ops.quote_name(BuildAgentInstance._meta.db_table)
    sql = f"UPDATE {table} SET status = %s, exit_code = %s, completed_at = %s, last_heartbeat = %s WHERE id = %s"
    at = connection.ops.adapt_datetimefield_value  # as the ORM stores them (UTC; text on SQLite)
    rows = [(a.status, a.exit_code, at(a.completed_at), at(a.last_heartbeat), a.pk) for a in agents]
    with connection.cursor() as cursor:
        cursor.executemany(sql, rows)
