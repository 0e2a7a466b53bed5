"""The relay: tails the event log inside the ASGI server and publishes it to the Channels layer.

**One per server process, started by the first websocket that needs it, stopped when the last
one leaves.** daphne speaks no ASGI lifespan protocol, so nothing runs at server start or stop:
the first live consumer (`observability.consumers`) to subscribe starts the relay as a task of
the server's event loop, and the last to unsubscribe cancels it (and closes its database
connection). A process that serves no websocket never touches the event log. `relay()` hands
out the one relay of the running event loop.

**Each process tails the log itself and publishes only to its own groups.** The executor is
always another process (or machine), so the log is the only thing every server process can
see. Group names carry a prefix drawn when the relay starts (`tw-live.<random>.run.<id>`,
`tw-live.<random>.dashboard`), and only this process's consumers join them. With channels-redis
and several daphne processes each client is therefore sent each event once, by the process that
serves it; with the in-memory layer (the default) the prefix changes nothing.

**Commit order, nothing lost, nothing twice.** `Tail` reads the log on a thread of its own,
with a database connection it keeps open (one `SELECT` every `POLL_SECONDS`, 25 ms by default;
the consumers, not the relay, go through `database_sync_to_async`), and *releases* events
strictly in id order: every id up to `watermark` has been released or is known never to come.
On SQLite there is a single writer, so ids commit in order and everything read is released at
once. On PostgreSQL an id is drawn at insert, so a lower id can commit after a higher one; an id
missing below the highest seen is a *gap*, and the events after it are held until the gap fills
(its transaction commits: the usual case, a few milliseconds) or is known to be empty. Each read
carries the statement's own snapshot (`pg_current_snapshot()`): once a gap is
`GAP_SETTLE_SECONDS` (0.1 s) old, long enough for the transaction that drew the id to have a
transaction id, the transactions then in flight on this database (pg_stat_activity; every
transaction of the server if the role may not see other roles' sessions there) are noted, and
when none of them is in flight any more and the id is still not visible, it never will be (a
rollback, or a sequence value never used): the stream moves on. When the relay starts, the last
`START_WINDOW` ids are checked the same way (without the settling time), so it starts at once on
an idle database.

A gap still open after `GAP_GRACE_SECONDS` (5 s) is given up, so that one long transaction
cannot stall every client: transactions that write events and run longer than that are rare
(the executor's last milliseconds; laying out a run of tens of thousands of steps takes a
second or two). If its events commit later (within `LATE_SECONDS`, 60 s) they are still
published, out of order: the one case where order is not kept, and a client that had already
moved its `?after=` cursor past them would not get them again on a reconnect.

**What a consumer gets.** Each poll's released events go, one message per group, as
`{"type": "live.events", "events": [{"id", "execution_id", "text"}, ...], "prev": P, "last": L}`
(each event's JSON is encoded once, on the relay's thread): `prev` is the id of the last event
published to that group before these. A consumer that has covered everything up to `prev` sends
them on; one that finds `prev` beyond what it covered knows messages were lost (the channel layer
drops silently when a consumer's channel is full: a slow client) and catches up from the log. A
group that has had messages also gets `{"type": "live.tick", "last": L}` every `TICK_SECONDS` for
`TICK_FOR_SECONDS`, so a loss of the last message is noticed too.

Tunables: `settings.TIDEWATCH_LIVE` (a dict overriding `DEFAULTS`), or the environment
(`TIDEWATCH_LIVE_POLL_MS`, `TIDEWATCH_LIVE_GAP_GRACE_SECONDS`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from asgiref.sync import SyncToAsync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection

from executions.models import Event
from executions.records import iso

log = logging.getLogger(__name__)

DEFAULTS = {
    "POLL_SECONDS": float(os.environ.get("TIDEWATCH_LIVE_POLL_MS", "25")) / 1000,
    "BATCH": 500,
    "GAP_SETTLE_SECONDS": 0.1,
    "GAP_GRACE_SECONDS": float(os.environ.get("TIDEWATCH_LIVE_GAP_GRACE_SECONDS", "5")),
    "LATE_SECONDS": 60.0,
    "START_WINDOW": 1000,
    "MAX_GAP_SPAN": 10_000,
    "TICK_SECONDS": 1.0,
    "TICK_FOR_SECONDS": 30.0,
    "RETRY_SECONDS": 1.0,
}


def live_setting(name: str):
    return {**DEFAULTS, **getattr(settings, "TIDEWATCH_LIVE", {})}[name]


def event_message(id_, execution_id, type_, payload, created_at) -> dict:
    """An event as clients get it (the REST API's event shape plus the run's id)."""
    if isinstance(payload, str | bytes):
        payload = json.loads(payload)
    if not isinstance(created_at, str):
        created_at = iso(created_at)
    return {
        "id": id_,
        "type": type_,
        "execution_id": execution_id,
        "payload": payload,
        "created_at": created_at,
    }


def encoded(events: list[dict]) -> list[dict]:
    """What goes through the channel layer: the id and run (to route and to check the order)
    and the JSON text the sockets send as it is."""
    return [{"id": e["id"], "execution_id": e["execution_id"], "text": json.dumps(e)} for e in events]


# --- tailing, in commit order --------------------------------------------------------------------


@dataclass
class Snapshot:
    """A PostgreSQL snapshot: xmin:xmax:xip (the top-level transactions then in flight)."""

    xmin: int
    xmax: int
    xip: frozenset[int]

    @classmethod
    def parse(cls, text: str) -> Snapshot:
        xmin, xmax, xip = text.split(":")
        return cls(int(xmin), int(xmax), frozenset(int(x) for x in xip.split(",") if x))


@dataclass
class Gap:
    first_seen: float
    waiting: frozenset[int] | None = None  # transactions in flight once the gap had settled


class Tail:
    """Reads the event log after a cursor and releases events in id order, holding back the ids
    that may still commit (PostgreSQL). Synchronous: the relay runs it on its own thread."""

    def __init__(self, *, clock=time.monotonic):
        self.clock = clock
        self.postgres = connection.vendor == "postgresql"
        self.table = connection.ops.quote_name(Event._meta.db_table)
        self.batch = live_setting("BATCH")
        self.settle = live_setting("GAP_SETTLE_SECONDS")
        self.grace = live_setting("GAP_GRACE_SECONDS")
        self.late_for = live_setting("LATE_SECONDS")
        self.hi = 0  # the highest id seen
        self.watermark = 0  # every id up to here is released or will never come
        self.held: dict[int, dict] = {}
        self.gaps: dict[int, Gap] = {}
        self.late: dict[int, float] = {}  # given-up ids -> until when they are still looked for

    # The first read: everything before is history (clients ask for it with ?after=N). On
    # PostgreSQL the last START_WINDOW ids are checked for gaps that may still commit: any
    # writer that holds one is in flight now, so only those transactions are waited for (up to
    # the grace), without the settling delay. An idle database starts at once.
    def start(self) -> int:
        window = live_setting("START_WINDOW") if self.postgres else 0
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT MAX(id) FROM {self.table}")
            top = cursor.fetchone()[0] or 0
        self.hi = self.watermark = max(top - window, 0)
        if self.postgres and top:
            started = self.clock()
            while self.hi < top:  # reads (top - window, top]: missing ids there become gaps
                before = self.hi
                self.poll(settled=True)
                if self.hi == before:
                    break
            while self.gaps and self.clock() - started < self.grace:
                time.sleep(live_setting("POLL_SECONDS"))
                self.poll()
            # What was committed before the start is history, not news: only ids from the
            # first gap still open on are published.
            first_gap = min(self.gaps, default=self.hi + 1)
            for id_ in [i for i in self.held if i < first_gap]:
                del self.held[id_]
            self.watermark = first_gap - 1
            self.late.clear()
        else:
            self.hi = self.watermark = top
        return self.watermark

    def poll(self, *, settled: bool = False) -> tuple[list[dict], list[dict], int]:
        """One read: (events released in id order, late events, the new watermark). `settled`:
        new gaps need no settling (at the start, where every writer holding one is in flight)."""
        rows, snapshot = self._read()
        now = self.clock()
        born = now - self.settle if settled else now
        late = []
        for row in rows:
            id_ = row["id"]
            if id_ > self.hi:
                if self.postgres and id_ - self.hi - 1 <= live_setting("MAX_GAP_SPAN"):
                    for missing in range(self.hi + 1, id_):
                        self.gaps[missing] = Gap(born)
                self.hi = id_
                self.held[id_] = row
            elif id_ in self.gaps:
                del self.gaps[id_]
                self.held[id_] = row
            elif self.late.pop(id_, None) is not None:
                late.append(row)
        if snapshot is not None:
            self._settle(snapshot, now)
        limit = min(self.gaps) - 1 if self.gaps else self.hi
        released = [self.held.pop(id_) for id_ in sorted(i for i in self.held if i <= limit)]
        self.watermark = max(self.watermark, limit)
        for id_, until in list(self.late.items()):
            if until < now:
                del self.late[id_]
        return released, late, self.watermark

    def _settle(self, snapshot: Snapshot, now: float) -> None:
        ours = None
        for id_, gap in list(self.gaps.items()):
            age = now - gap.first_seen
            if age >= self.grace:
                log.warning("event %s still not committed after %.1f s: released what follows", id_, age)
                del self.gaps[id_]
                self.late[id_] = now + self.late_for
            elif age >= self.settle:
                if gap.waiting is None:
                    if ours is None:
                        ours = self._in_flight_here(snapshot)
                    gap.waiting = ours
                if not gap.waiting & snapshot.xip:
                    del self.gaps[id_]  # every writer that could hold it has ended: it is empty

    def _in_flight_here(self, snapshot: Snapshot) -> frozenset[int]:
        """The transactions of `snapshot` in flight that write to this database. The snapshot is
        the whole server's: another database's long transaction (another project's, or a test
        run's) must not hold this stream up. When pg_stat_activity hides other roles' sessions
        (no pg_read_all_stats), every transaction in flight counts."""
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT backend_xid::text, query = '<insufficient privilege>' FROM pg_stat_activity"
                " WHERE datname = current_database() AND (backend_xid IS NOT NULL"
                " OR query = '<insufficient privilege>')"
            )
            rows = cursor.fetchall()
        if any(hidden for _, hidden in rows):
            return snapshot.xip
        here = {int(xid) for xid, _ in rows if xid is not None}
        return frozenset(x for x in snapshot.xip if x % 2**32 in here)

    def _read(self) -> tuple[list[dict], Snapshot | None]:
        pending = sorted([*self.gaps, *self.late])
        with connection.cursor() as cursor:
            if self.postgres:
                # One statement: the rows and the snapshot they were read under.
                cursor.execute(
                    "SELECT s.snap, e.id, e.execution_id, e.type, e.payload, e.created_at"
                    " FROM (SELECT pg_current_snapshot()::text AS snap) s"
                    " LEFT JOIN LATERAL (SELECT id, execution_id, type, payload, created_at"
                    f" FROM {self.table} WHERE id > %s OR id = ANY(%s) ORDER BY id LIMIT %s) e ON true",
                    [self.hi, pending, self.batch],
                )
                result = cursor.fetchall()
                snapshot = Snapshot.parse(result[0][0])
                rows = [r[1:] for r in result if r[1] is not None]
            else:
                cursor.execute(
                    f"SELECT id, execution_id, type, payload, created_at FROM {self.table}"
                    " WHERE id > %s ORDER BY id LIMIT %s",
                    [self.hi, self.batch],
                )
                rows, snapshot = cursor.fetchall(), None
        return [
            event_message(id_, run, type_, payload, _aware(at)) for id_, run, type_, payload, at in rows
        ], snapshot


def _aware(value):
    """SQLite hands back text (UTC); PostgreSQL an aware datetime."""
    if isinstance(value, str) or (value is not None and value.tzinfo is None):
        value = connection.ops.convert_datetimefield_value(value, None, connection)
    return value


def close_connection() -> None:
    connection.close()


# --- the relay -----------------------------------------------------------------------------------


class Relay:
    """Tails the log (`Tail`, on a thread of its own) and publishes to this process's groups."""

    def __init__(self):
        self.prefix = f"tw-live.{uuid.uuid4().hex[:12]}"
        self.counts: dict[str, int] = {}  # subscribed key -> consumers
        self.prev: dict[str, int] = {}  # key -> id of the last event published to it
        self.last_sent: dict[str, float] = {}  # key -> when it was last sent events
        self.watermark = 0
        self.polls = 0
        self.published = 0
        self._task: asyncio.Task | None = None
        self._ready: asyncio.Future | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._tail: Tail | None = None

    def group(self, key: str) -> str:
        return f"{self.prefix}.{key}"

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def subscribe(self, key: str, channel_name: str) -> int:
        """Join `key`'s group; returns the watermark: events up to it are the caller's to read
        from the log, events after it will be published to the group."""
        self.counts[key] = self.counts.get(key, 0) + 1
        try:
            await get_channel_layer().group_add(self.group(key), channel_name)
            if not self.running:
                self._start()
            await asyncio.shield(self._ready)
        except BaseException:
            await self.unsubscribe(key, channel_name)
            raise
        # Positioned: from now on this group is sent what is released after the watermark.
        self.prev.setdefault(key, self.watermark)
        return self.watermark

    async def unsubscribe(self, key: str, channel_name: str) -> None:
        left = self.counts.get(key, 0) - 1
        if left > 0:
            self.counts[key] = left
        else:
            self.counts.pop(key, None)
            self.prev.pop(key, None)
            self.last_sent.pop(key, None)
        try:
            await get_channel_layer().group_discard(self.group(key), channel_name)
        finally:
            if not self.counts:
                await self.stop()

    def _start(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="tidewatch-relay")
        self._ready = asyncio.get_running_loop().create_future()
        self._task = asyncio.get_running_loop().create_task(self._run(self._ready))

    async def stop(self) -> None:
        task, executor = self._task, self._executor
        self._task = self._executor = None
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:  # noqa: BLE001  (logged by _run)
                pass
        if executor is not None:
            executor.submit(close_connection)  # after any read still running on that thread
            executor.shutdown(wait=False)

    def _call(self, fn):
        return SyncToAsync(fn, thread_sensitive=False, executor=self._executor)()

    async def _run(self, ready: asyncio.Future) -> None:
        poll_seconds = live_setting("POLL_SECONDS")
        retry = live_setting("RETRY_SECONDS")
        try:
            self._tail = Tail()
            self.watermark = await self._call(self._tail.start)
        except Exception as exc:
            log.exception("live relay: cannot read the event log")
            await self._call(close_connection)
            ready.set_exception(exc)
            return
        ready.set_result(self.watermark)
        next_tick = time.monotonic() + live_setting("TICK_SECONDS")
        while True:
            try:
                released, late, watermark = await self._call(self._poll)
            except Exception:  # noqa: BLE001  (the database went away: reconnect and go on)
                log.exception("live relay: reading the event log failed; retrying")
                await self._call(close_connection)
                await asyncio.sleep(retry)
                continue
            self.polls += 1
            self.watermark = watermark
            try:
                if released or late:
                    await self._publish(released, late)
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + live_setting("TICK_SECONDS")
                    await self._tick()
            except Exception:  # noqa: BLE001  (a layer hiccup: the next message's prev tells)
                log.exception("live relay: publishing failed")
            if len(released) < self._tail.batch:
                await asyncio.sleep(poll_seconds)

    def _poll(self):
        """On the relay's thread: read, and encode each event once (not once per socket)."""
        released, late, watermark = self._tail.poll()
        return encoded(released), encoded(late), watermark

    async def _publish(self, released: list[dict], late: list[dict]) -> None:
        """One message per subscribed group; computed before any await, so a consumer that
        subscribes meanwhile reads a watermark these messages are consistent with."""
        messages = []
        for key, events in self._route(released).items():
            messages.append((key, {"type": "live.events", "events": events, "prev": self.prev[key],
                                   "last": events[-1]["id"]}))  # fmt: skip
            self.prev[key] = events[-1]["id"]
        for key, events in self._route(late).items():
            messages.append((key, {"type": "live.late", "events": events}))
        now = time.monotonic()
        layer = get_channel_layer()
        for key, message in messages:
            self.last_sent[key] = now
            self.published += len(message["events"])
            await layer.group_send(self.group(key), message)

    def _route(self, events: list[dict]) -> dict[str, list[dict]]:
        routed: dict[str, list[dict]] = {}
        dashboard = "dashboard" in self.prev
        for event in events:
            key = f"run.{event['execution_id']}"
            if key in self.prev:
                routed.setdefault(key, []).append(event)
            if dashboard:
                routed.setdefault("dashboard", []).append(event)
        return routed

    async def _tick(self) -> None:
        horizon = time.monotonic() - live_setting("TICK_FOR_SECONDS")
        layer = get_channel_layer()
        for key, at in list(self.last_sent.items()):
            if at < horizon:
                del self.last_sent[key]
            elif key in self.prev:
                await layer.group_send(self.group(key), {"type": "live.tick", "last": self.prev[key]})


_relays: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Relay] = weakref.WeakKeyDictionary()


def relay() -> Relay:
    """The relay of the running event loop (daphne runs one per process)."""
    loop = asyncio.get_running_loop()
    found = _relays.get(loop)
    if found is None:
        found = _relays[loop] = Relay()
    return found
