"""End to end: daphne processes on 127.0.0.1, the executor in another process
(`manage.py execute_run`), and a real websocket client (the `websockets` library). Runs on
whatever the suite runs on: SQLite with the in-memory layer by default; PostgreSQL with
channels-redis when DATABASE_URL and REDIS_URL are set.

Every client receives, for every task of the run, exactly its audit sequence, and every event
of the run once, in id order; a daphne killed in the middle of a run and a reconnect with
`?after=` lose nothing.
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth.models import Group, User
from rest_framework.authtoken.models import Token
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from executions import services
from executions.models import Event, RunStatus, TaskStatusAudit
from tests.factories import task_list
from tests.servers import Daphne
from waves.models import Task

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def daphnes(child_env, tmp_path):
    started: list[Daphne] = []

    def start() -> Daphne:
        started.append(Daphne(child_env, tmp_path / "daphne.log"))
        return started[-1]

    yield start
    for daphne in started:
        daphne.stop()


@pytest.fixture
def watcher():
    team = Group.objects.create(name="ops")
    user = User.objects.create_user("watcher", password="pw")
    user.groups.add(team)
    return team, Token.objects.create(user=user).key


def laid_out_run(team, keys, edges, command):
    tl = task_list("e2e", team=team, keys=keys, edges=edges)
    Task.objects.filter(task_list=tl).update(command=command)
    return services.run_start(tl, max_parallelism=3)


def executor(child_env, run_id) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "execute_run", str(run_id), "--json"],
        env=child_env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def finished(message) -> bool:
    return message.get("type") == "run.update" and message["payload"]["status"] in RunStatus.terminal()


async def listen(url: str, token: str, into: list, *, until=finished, timeout: float = 60) -> None:
    """Append every message of one socket to `into` until `until(message)`, then a little more
    (anything after the end would be a duplicate or a stray)."""
    async with connect(url, additional_headers={"Authorization": f"Token {token}"}, open_timeout=10) as ws:
        async with asyncio.timeout(timeout):
            while True:
                message = json.loads(await ws.recv())
                into.append(message)
                if until(message):
                    break
        try:
            async with asyncio.timeout(0.5):
                while True:
                    into.append(json.loads(await ws.recv()))
        except TimeoutError:
            pass


def check_against_the_log(run, messages, after: int) -> None:
    """Every event of the run after `after`, once, in id order; per task, its audit sequence."""
    events = [m for m in messages if "id" in m]
    logged = list(
        Event.objects.filter(execution=run, id__gt=after).order_by("id").values_list("id", flat=True)
    )
    assert [e["id"] for e in events] == logged
    audit: dict[int, list[str]] = {}
    for wave_task_id, status in (
        TaskStatusAudit.objects.filter(execution=run).order_by("id").values_list("wave_task_id", "new_status")
    ):
        audit.setdefault(wave_task_id, []).append(status)
    seen: dict[int, list[str]] = {}
    for e in events:
        if e["type"] == "task.update":
            seen.setdefault(e["payload"]["wave_task_id"], []).append(e["payload"]["status"])
    # The socket opened before the executor started: it saw each task's whole history after
    # the first status (pending, written when the run was laid out, is in the snapshot).
    assert seen == {wt: statuses[1:] for wt, statuses in audit.items()}
    assert {"task.update", "agent.update", "wave.update", "run.update", "stats.update"} <= {
        e["type"] for e in events
    }


def test_two_daphnes_stream_an_executor_run_to_real_clients(daphnes, child_env, watcher):
    team, token = watcher
    run = laid_out_run(team, ("a", "b", "c", "d"), [("c", "a"), ("c", "b"), ("d", "c")], "echo hi; sleep 0.1")
    servers = [daphnes(), daphnes()]  # each serves its own clients: no duplicates across them
    path = f"/ws/executions/{run.pk}/"

    async def scenario():
        inboxes = [[], [], []]
        listeners = [
            asyncio.create_task(listen(servers[i % 2].url(path), token, inboxes[i])) for i in range(3)
        ]
        while not all(inbox for inbox in inboxes):  # every snapshot in: the sockets are live
            await asyncio.sleep(0.02)
        proc = await asyncio.to_thread(executor, child_env, run.pk)
        out, err = await asyncio.to_thread(proc.communicate, timeout=60)
        assert proc.returncode == 0, err
        await asyncio.gather(*listeners)
        return inboxes

    inboxes = asyncio.run(scenario())
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    for inbox in inboxes:
        snapshot = inbox[0]
        assert snapshot["type"] == "snapshot" and {t["key"] for t in snapshot["tasks"]} == set("abcd")
        check_against_the_log(run, inbox[1:], snapshot["after"])


def test_a_daphne_restart_mid_run_then_after_loses_nothing(daphnes, child_env, watcher):
    team, token = watcher
    keys = tuple(f"s{i}" for i in range(6))
    run = laid_out_run(team, keys, [(keys[i], keys[i - 1]) for i in range(1, 6)], "sleep 0.3")
    path = f"/ws/executions/{run.pk}/"

    async def scenario():
        first = daphnes()
        before: list = []
        listener = asyncio.create_task(listen(first.url(path), token, before))
        while not before:
            await asyncio.sleep(0.02)
        proc = await asyncio.to_thread(executor, child_env, run.pk)
        while sum(m.get("type") == "task.update" for m in before) < 4:  # in the middle of the run
            await asyncio.sleep(0.01)
        await asyncio.to_thread(first.stop, signal.SIGKILL)  # a crash, not a goodbye
        with pytest.raises(ConnectionClosed):
            await listener
        second = await asyncio.to_thread(daphnes)
        last = max(m["id"] for m in before if "id" in m)
        after: list = []
        await listen(second.url(f"{path}?after={last}"), token, after)
        out, err = await asyncio.to_thread(proc.communicate, timeout=60)
        assert proc.returncode == 0, err
        return before, after

    before, after = asyncio.run(scenario())
    assert all(m.get("type") != "snapshot" for m in after)  # with ?after=, the log instead
    check_against_the_log(run, before[1:] + after, before[0]["after"])


def test_the_redis_layer_waits_on_idle_sockets_without_a_read_timeout():
    """redis-py 8 reads with a 5 s timeout by default; channels-redis blocks up to 5 s waiting
    for a consumer's next message, so every idle socket died after 5 s (settings.py says)."""
    code = "from django.conf import settings; print(settings.CHANNEL_LAYERS['default']['CONFIG']['hosts'])"
    env = {**os.environ, "REDIS_URL": "redis://127.0.0.1:6379/0", "DJANGO_SETTINGS_MODULE": "config.settings"}
    out = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {code}"],
        env=env, cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "'socket_timeout': None" in out
