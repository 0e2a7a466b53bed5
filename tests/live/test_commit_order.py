"""Commit order on PostgreSQL: ids are drawn at insert, so a lower id can commit after a higher
one. Two connections commit interleaved ids (and roll some back); the relay's tail releases
every committed event exactly once, in id order, and never one below a gap that may still
commit. On SQLite there is one writer at a time, so ids commit in order: nothing to test."""

import asyncio
import json
import random
import time

import psycopg
import pytest
from asgiref.sync import async_to_sync
from django.db import connection

from executions.models import Event
from observability.relay import Tail
from tests.live.helpers import open_socket, receive, receive_until

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        connection.vendor != "postgresql",
        reason="SQLite has one writer at a time, so event ids commit in id order: set DATABASE_URL "
        "to a PostgreSQL server to test commit order",
    ),
]


def writer() -> psycopg.Connection:
    s = connection.settings_dict
    return psycopg.connect(
        dbname=s["NAME"], user=s["USER"], password=s["PASSWORD"] or None, host=s["HOST"] or None,
        port=s["PORT"] or None,
    )  # fmt: skip


def insert(conn: psycopg.Connection, run_id: int, n: int = 0) -> int:
    table = Event._meta.db_table
    return conn.execute(
        f"INSERT INTO {table} (execution_id, type, payload, created_at) VALUES (%s, 'run.update', %s, now())"
        " RETURNING id",
        [run_id, json.dumps({"n": n})],
    ).fetchone()[0]


def poll_until(tail: Tail, done, timeout: float = 5.0) -> list[int]:
    released = []
    deadline = time.monotonic() + timeout
    while True:
        got, late, _ = tail.poll()
        assert not late, late
        released += [e["id"] for e in got]
        if done(released):
            return released
        assert time.monotonic() < deadline, f"released {released}, gaps {sorted(tail.gaps)}"
        time.sleep(0.01)


@pytest.fixture
def tail(settings):
    settings.TIDEWATCH_LIVE = {"POLL_SECONDS": 0.01, "GAP_SETTLE_SECONDS": 0.05, "GAP_GRACE_SECONDS": 5}
    tail = Tail()
    tail.start()
    return tail


def test_a_lower_id_that_commits_later_is_released_first(red_run, tail):
    c1, c2 = writer(), writer()
    try:
        a = insert(c1, red_run.pk)  # drawn first, committed last
        b = insert(c2, red_run.pk)
        c2.commit()
        assert a < b
        released, _, watermark = tail.poll()
        assert released == [] and watermark < a  # b waits behind a
        time.sleep(0.2)  # longer than the settling time: a is still in flight, so b still waits
        assert tail.poll()[0] == []
        c1.commit()
        assert poll_until(tail, lambda r: r) == [a, b]
    finally:
        c1.close()
        c2.close()


def test_a_rolled_back_id_does_not_hold_the_stream(red_run, tail):
    c1, c2 = writer(), writer()
    try:
        x = insert(c1, red_run.pk)
        y = insert(c2, red_run.pk)
        c2.commit()
        c1.rollback()
        assert poll_until(tail, lambda r: r, timeout=2) == [y]
        assert tail.watermark >= y and x not in tail.gaps
    finally:
        c1.close()
        c2.close()


def test_interleaved_commits_and_rollbacks_release_every_event_once_in_order(red_run, tail):
    rng = random.Random(18)
    conns = [writer(), writer()]
    open_ids: list[list[int]] = [[], []]
    committed: list[int] = []
    released: list[int] = []

    def poll():
        got, late, watermark = tail.poll()
        assert not late
        released.extend(e["id"] for e in got)
        # Never past an id still open in a transaction.
        assert all(watermark < min(ids) for ids in open_ids if ids)

    try:
        for step in range(400):
            i = rng.randrange(2)
            roll = rng.random()
            if roll < 0.6:
                open_ids[i].append(insert(conns[i], red_run.pk, step))
            elif roll < 0.9:
                conns[i].commit()
                committed += open_ids[i]
                open_ids[i] = []
            else:
                conns[i].rollback()
                open_ids[i] = []
            if step % 7 == 0:
                poll()
        for i in range(2):
            conns[i].commit()
            committed += open_ids[i]
            open_ids[i] = []
    finally:
        for conn in conns:
            conn.close()
    assert len(committed) > 100
    deadline = time.monotonic() + 5
    while len(released) < len(committed) and time.monotonic() < deadline:
        poll()
        time.sleep(0.01)
    assert released == sorted(committed)  # each committed event once, in id order


def test_two_writers_stream_through_the_relay_exactly_once_in_order(red_run, token, settings):
    """Through the relay and a socket: two connections commit interleaved ids (some of them
    rolled back) while the socket listens; it gets every committed event once, in id order."""
    settings.TIDEWATCH_LIVE = {"POLL_SECONDS": 0.005, "GAP_SETTLE_SECONDS": 0.05}
    rng = random.Random(7)

    async def scenario():
        socket = await open_socket(f"/ws/executions/{red_run.pk}/", token=token)
        await receive(socket)
        conns = [await asyncio.to_thread(writer) for _ in range(2)]
        open_ids: list[list[int]] = [[], []]
        committed: list[int] = []
        try:
            for step in range(300):
                i = rng.randrange(2)
                roll = rng.random()
                if roll < 0.6:
                    open_ids[i].append(await asyncio.to_thread(insert, conns[i], red_run.pk, step))
                elif roll < 0.92:
                    await asyncio.to_thread(conns[i].commit)
                    committed += open_ids[i]
                    open_ids[i] = []
                else:
                    await asyncio.to_thread(conns[i].rollback)
                    open_ids[i] = []
                if step % 5 == 0:
                    await asyncio.sleep(0.003)
            for i in range(2):
                await asyncio.to_thread(conns[i].commit)
                committed += open_ids[i]
        finally:
            for conn in conns:
                await asyncio.to_thread(conn.close)
        expected = sorted(committed)
        got = await receive_until(socket, lambda m: m and m[-1]["id"] == expected[-1], timeout=20)
        assert [m["id"] for m in got] == expected
        assert await socket.receive_nothing(0.3)
        await socket.disconnect()

    async_to_sync(scenario)()


def test_a_transaction_longer_than_the_grace_is_given_up_then_delivered_late(red_run, settings):
    settings.TIDEWATCH_LIVE = {"GAP_SETTLE_SECONDS": 0.05, "GAP_GRACE_SECONDS": 0.3}
    tail = Tail()
    tail.start()
    c1, c2 = writer(), writer()
    try:
        x = insert(c1, red_run.pk)  # a long transaction
        y = insert(c2, red_run.pk)
        c2.commit()
        started = time.monotonic()
        assert poll_until(tail, lambda r: r) == [y]  # one long transaction stalls no one for long
        assert time.monotonic() - started >= 0.25
        c1.commit()
        late = []
        deadline = time.monotonic() + 2
        while not late and time.monotonic() < deadline:
            released, late, _ = tail.poll()
            assert released == []
        assert [e["id"] for e in late] == [x]  # out of order, but not lost
    finally:
        c1.close()
        c2.close()
