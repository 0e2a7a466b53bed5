"""The live websockets through channels' WebsocketCommunicator, against the real ASGI
application: refusals, authentication (cookie and token), the team rule, the snapshot, events
in order and each once, ?after=N, and resync of a socket that fell behind."""

import asyncio

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token

from executions import services
from executions.models import Event, RunStatus, TaskStatus, WaveTask
from observability import relay as relay_module
from tests.factories import run_with_waves, task_list
from tests.live.conftest import layers
from tests.live.helpers import close_code, nothing_more, open_socket, receive, receive_until, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)


def run(coroutine_function, *args):
    """Run a scenario on an event loop of its own; at its end no relay may be left running."""

    async def scenario():
        result = await coroutine_function(*args)
        await asyncio.sleep(0)
        assert not relay_module.relay().running, "the relay outlived its last socket"
        return result

    return async_to_sync(scenario)()


def event_ids(run_id, **filters):
    return list(
        Event.objects.filter(execution_id=run_id, **filters).order_by("id").values_list("id", flat=True)
    )


@database_sync_to_async
def move(run_id, keys, status, expected):
    wts = list(WaveTask.objects.filter(execution_id=run_id, key__in=keys).order_by("key"))
    return services.transition(wts, status, expected=expected)


@database_sync_to_async
def write_events(run_id, n, type_="run.update"):
    from django.utils import timezone

    return [
        Event.objects.create(execution_id=run_id, type=type_, payload={"n": i}, created_at=timezone.now()).pk
        for i in range(n)
    ]


def events_of(messages):
    return [m for m in messages if "id" in m]


# --- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/ws/nowhere/", "/ws/executions/", "/", "/ws/executions/1/extra/"])
def test_an_unknown_path_is_closed_with_4404_not_a_500(path, member):
    cookie = session_cookie(member)

    async def scenario():
        socket = await open_socket(path, cookie=cookie)
        assert await close_code(socket) == 4404

    run(scenario)


@pytest.mark.parametrize("path", ["/ws/executions/{id}/", "/ws/dashboard/"])
def test_anonymous_and_bad_tokens_are_closed_with_4401(path, red_run, member):
    member.is_active = False
    member.save()
    inactive = Token.objects.create(user=member).key
    path = path.format(id=red_run.pk)

    async def scenario():
        for kwargs in ({}, {"token": "0" * 40}, {"token": inactive}, {"cookie": b"sessionid=forged"}):
            socket = await open_socket(path, **kwargs)
            assert await close_code(socket) == 4401, kwargs

    run(scenario)


def test_a_foreign_origin_is_closed_with_4403_and_no_origin_needs_a_token(red_run, member, token):
    cookie = session_cookie(member)
    path = f"/ws/executions/{red_run.pk}/"

    async def scenario():
        socket = await open_socket(path, cookie=cookie, origin=b"http://evil.example")
        assert await close_code(socket) == 4403
        socket = await open_socket(path, cookie=cookie, origin=None)  # a cookie needs an Origin
        assert await close_code(socket) == 4403
        socket = await open_socket(path, token=token, origin=None)  # a script with a token: fine
        assert (await receive(socket))["type"] == "snapshot"
        await socket.disconnect()

    run(scenario)


def test_another_teams_run_and_a_missing_run_are_4404(red_run, blue_run, member, token):
    async def scenario():
        for path in (f"/ws/executions/{blue_run.pk}/", "/ws/executions/999999/", "/ws/executions/abc/",
                     f"/ws/executions/{2**64}/"):  # fmt: skip
            socket = await open_socket(path, token=token)
            assert await close_code(socket) == 4404, path

    run(scenario)


def test_a_bad_after_is_closed_with_4400(red_run, token):
    async def scenario():
        for after in ("x", "-1", str(2**63)):
            socket = await open_socket(f"/ws/executions/{red_run.pk}/?after={after}", token=token)
            assert await close_code(socket) == 4400

    run(scenario)


# --- snapshot and events -------------------------------------------------------------------------


def test_cookie_snapshot_then_every_event_in_order_once(red_run, member):
    cookie = session_cookie(member)
    before = event_ids(red_run.pk)

    async def scenario():
        socket = await open_socket(f"/ws/executions/{red_run.pk}/", cookie=cookie)
        snapshot = await receive(socket)
        assert snapshot["type"] == "snapshot"
        assert snapshot["after"] >= max(before)
        assert (
            snapshot["run"]["execution_id"] == red_run.pk and snapshot["run"]["status"] == RunStatus.RUNNING
        )
        assert [w["wave_number"] for w in snapshot["waves"]] == [0, 1]
        assert sorted(t["key"] for t in snapshot["tasks"]) == ["a", "b", "c"]
        assert {t["status"] for t in snapshot["tasks"]} == {TaskStatus.PENDING}
        assert snapshot["agents"] == []
        assert [s["task_count"] for s in snapshot["statistics"]] == [2, 1]

        await move(red_run.pk, ["a", "b"], TaskStatus.RUNNING, TaskStatus.PENDING)
        await move(red_run.pk, ["a"], TaskStatus.SUCCEEDED, TaskStatus.RUNNING)
        await move(red_run.pk, ["b"], TaskStatus.FAILED, TaskStatus.RUNNING)
        expected = await database_sync_to_async(event_ids)(red_run.pk, id__gt=snapshot["after"])
        got = await receive_until(socket, lambda m: m and m[-1]["id"] == expected[-1])
        assert [m["id"] for m in got] == expected  # in order, each once, nothing else
        tasks = [(m["payload"]["key"], m["payload"]["status"]) for m in got if m["type"] == "task.update"]
        assert tasks == [("a", "running"), ("b", "running"), ("a", "succeeded"), ("b", "failed")]
        assert {m["type"] for m in got} <= {"task.update", "stats.update"}
        assert all(m["execution_id"] == red_run.pk and m["created_at"].endswith("Z") for m in got)
        assert await nothing_more(socket)
        await socket.disconnect()

    run(scenario)


def test_token_socket_gets_only_its_run(red_run, token, teams):
    other_red = run_with_waves(task_list("red-two", team=teams[0]), [["a"]])

    async def scenario():
        socket = await open_socket(f"/ws/executions/{red_run.pk}/", token=token)
        snapshot = await receive(socket)
        await write_events(other_red.pk, 3)
        mine = await write_events(red_run.pk, 3)
        got = await receive_until(socket, lambda m: len(m) == 3)
        assert [m["id"] for m in got] == mine
        assert await nothing_more(socket)
        await socket.disconnect()
        assert snapshot["after"] < mine[0]

    run(scenario)


def test_after_backfills_then_goes_live_without_a_duplicate_at_the_seam(red_run, token):
    history = event_ids(red_run.pk)

    async def scenario():
        older = await write_events(red_run.pk, 5)
        socket = await open_socket(f"/ws/executions/{red_run.pk}/?after={history[1]}", token=token)
        newer = await write_events(red_run.pk, 5)
        expected = history[2:] + older + newer
        got = await receive_until(socket, lambda m: m and m[-1]["id"] == expected[-1])
        assert [m["id"] for m in got] == expected  # no snapshot, the log after N, then live
        assert await nothing_more(socket)
        await socket.disconnect()
        # Reconnecting with the last id seen: nothing again, then only what is new.
        socket = await open_socket(f"/ws/executions/{red_run.pk}/?after={expected[-1]}", token=token)
        assert await nothing_more(socket)
        last = await write_events(red_run.pk, 1)
        assert [(await receive(socket))["id"]] == last
        await socket.disconnect()

    run(scenario)


def test_a_slow_socket_gets_resync_and_catches_up_from_the_log(red_run, token, settings):
    settings.CHANNEL_LAYERS = layers(capacity=2)
    from observability.consumers import RunConsumer

    gate = asyncio.Event()
    original = RunConsumer.live_events

    async def slow(self, message):
        await gate.wait()  # this consumer falls behind: its channel fills, the layer drops
        await original(self, message)

    RunConsumer.live_events = slow

    async def scenario():
        try:
            socket = await open_socket(f"/ws/executions/{red_run.pk}/", token=token)
            snapshot = await receive(socket)
            relay = relay_module.relay()
            written = []
            for _ in range(8):  # eight polls' worth: eight messages for a channel that holds two
                written += await write_events(red_run.pk, 2)
                while relay.watermark < written[-1]:
                    await asyncio.sleep(0.005)
                await asyncio.sleep(0.02)
            gate.set()
            got = await receive_until(socket, lambda m: m and m[-1].get("id") == written[-1])
            resyncs = [m for m in got if m["type"] == "resync"]
            assert resyncs and resyncs[0]["after"] >= snapshot["after"]
            ids = [m["id"] for m in got if "id" in m]
            assert ids == written  # every event, once, in order: nothing dropped silently
            assert await nothing_more(socket)
            await socket.disconnect()
        finally:
            RunConsumer.live_events = original

    run(scenario)


# --- the dashboard -------------------------------------------------------------------------------


def test_dashboard_follows_the_team_rule(red_run, blue_run, member, outsider, teams):
    cookie = session_cookie(member)
    root = User.objects.create_superuser("root", password="pw")
    root_cookie = session_cookie(root)
    red_list = red_run.task_list

    async def scenario():
        socket = await open_socket("/ws/dashboard/", cookie=cookie)
        snapshot = await receive(socket)
        assert [r["execution_id"] for r in snapshot["runs"]] == [red_run.pk]
        assert snapshot["runs"][0]["steps"] == {"pending": 3}
        boss = await open_socket("/ws/dashboard/", cookie=root_cookie)
        assert {r["execution_id"] for r in (await receive(boss))["runs"]} == {red_run.pk, blue_run.pk}

        await write_events(blue_run.pk, 2)
        mine = await write_events(red_run.pk, 2)
        # A run started after the socket opened is followed too.
        later = await database_sync_to_async(run_with_waves)(red_list, [["a"]])
        later_events = await database_sync_to_async(event_ids)(later.pk)
        expected = mine + later_events
        got = await receive_until(socket, lambda m: m and m[-1]["id"] == expected[-1])
        assert [m["id"] for m in got] == expected
        assert await nothing_more(socket)
        everything = await receive_until(boss, lambda m: m and m[-1]["id"] == expected[-1])
        assert {m["execution_id"] for m in everything} == {red_run.pk, blue_run.pk, later.pk}
        await socket.disconnect()
        await boss.disconnect()

    run(scenario)


def test_stats_updates_are_coalesced_and_reach_the_socket(red_run, token):
    from executions.capture import Captured
    from executions.signals import output_captured

    wt = WaveTask.objects.select_related("wave").get(execution=red_run, key="a")

    @database_sync_to_async
    def lines(n):
        from django.db import transaction
        from django.utils import timezone

        for i in range(n):
            with transaction.atomic():
                output_captured.send(sender=None, execution_id=red_run.pk, records=[Captured(
                    execution_id=red_run.pk, wave_id=wt.wave_id, wave_number=0, task_id=wt.task_id,
                    wave_task_id=wt.pk, agent_id=None, instance_id="", sequence=i, kind="stdout",
                    text=f"line {i}", at=timezone.now())])  # fmt: skip

    async def scenario():
        socket = await open_socket(f"/ws/executions/{red_run.pk}/", token=token)
        await receive(socket)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await lines(40)
        await asyncio.sleep(0.3)
        await lines(1)  # the first change after the window: announced, with every line
        elapsed = loop.time() - started
        got = await receive_until(
            socket, lambda m: any(s["transcript_entry_count"] == 41 for e in m for s in e["payload"]["waves"])
        )
        assert {m["type"] for m in got} == {"stats.update"}
        assert len(got) <= elapsed / 0.25 + 2  # at most about four a second
        await socket.disconnect()

    run(scenario)


def test_the_relay_survives_a_failed_read(red_run, token, settings, monkeypatch):
    from django.db import OperationalError

    from observability.relay import Tail

    settings.TIDEWATCH_LIVE = {"POLL_SECONDS": 0.01, "RETRY_SECONDS": 0.05}
    original, calls = Tail.poll, []

    def flaky(self, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OperationalError("the server closed the connection")
        return original(self, **kwargs)

    monkeypatch.setattr(Tail, "poll", flaky)

    async def scenario():
        socket = await open_socket(f"/ws/executions/{red_run.pk}/", token=token)
        await receive(socket)
        while len(calls) < 4:
            await asyncio.sleep(0.01)
        written = await write_events(red_run.pk, 3)
        got = await receive_until(socket, lambda m: len(m) == 3)
        assert [m["id"] for m in got] == written
        await socket.disconnect()

    run(scenario)
