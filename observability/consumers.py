"""Live websockets: `ws/executions/{id}/` (one run) and `ws/dashboard/` (every run you may see).

Protocol (JSON text frames):

- on connect, `{"type": "snapshot", "after": W, ...}`: the run's `run`, `waves`, `tasks`, `agents`
  and `statistics` (or, for the dashboard, every active run in `runs` and their `agents`);
  with `?after=N` there is no snapshot: the events after N are read from the log instead;
- then every event after W (or N), in commit order, each once: `{"id", "type", "execution_id",
  "payload", "created_at"}` with type `run.update`, `wave.update`, `task.update`, `agent.update`
  or `stats.update`. A client that reconnects with `?after=<the last id it saw>` misses nothing
  and gets nothing twice;
- `{"type": "resync", "after": N}` when this socket fell behind (its queue in the channel layer
  filled and messages were dropped): the events after N follow at once, read from the log.

Refusals (the socket is accepted, then closed with a code): 4401 not authenticated, 4403 not
allowed (a foreign Origin; see config/ws_auth.py), 4404 no such run or another team's run (the
API's team rule), or no such path; 4400 a bad `after`.

Consumers stay thin: the database is read only through `database_sync_to_async` (observability.live);
events come from the relay (observability.relay) through the channel layer.
"""

from __future__ import annotations

import json

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.core.serializers.json import DjangoJSONEncoder

from executions.selectors import MAX_ID, parse_id
from observability import live
from observability.relay import relay

NOT_AUTHENTICATED, NOT_ALLOWED, NOT_FOUND, BAD_REQUEST = 4401, 4403, 4404, 4400


def _query(scope) -> dict[str, str]:
    from urllib.parse import parse_qsl

    return dict(parse_qsl(scope.get("query_string", b"").decode("latin1")))


class Refuse(AsyncWebsocketConsumer):
    """Accepts, then closes with `code`: the catch-all route answers 4404, not a 500."""

    code = NOT_FOUND

    def __init__(self, *args, code: int = NOT_FOUND, **kwargs):
        super().__init__(*args, **kwargs)
        self.code = code

    async def connect(self):
        await self.accept()
        await self.close(code=self.code)


class LiveConsumer(AsyncWebsocketConsumer):
    key: str = ""

    async def connect(self):
        self.subscribed = False
        self.covered = 0  # every event up to here is sent (or was never this socket's)
        await self.accept()
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            return await self.close(code=NOT_AUTHENTICATED)
        after = _query(self.scope).get("after")
        if after is not None:
            after = after.strip()
            if not (after.isascii() and after.isdigit() and int(after) <= MAX_ID):
                return await self.close(code=BAD_REQUEST)
            after = int(after)
        code = await self.authorize(user)
        if code:
            return await self.close(code=code)
        self.relay = relay()
        watermark = await self.relay.subscribe(self.key, self.channel_name)
        self.subscribed = True
        if after is None:
            snapshot = await database_sync_to_async(self.snapshot)()
            await self.send_json({"type": "snapshot", "after": watermark, **snapshot})
            self.covered = watermark
        else:
            self.covered = after
            await self.catch_up(watermark)
            self.covered = max(self.covered, watermark)

    async def disconnect(self, code):
        if getattr(self, "subscribed", False):
            self.subscribed = False
            await self.relay.unsubscribe(self.key, self.channel_name)

    async def send_json(self, content) -> None:
        await self.send(text_data=json.dumps(content, cls=DjangoJSONEncoder))

    # --- what the relay sends (through the channel layer) ---------------------------------------

    async def live_events(self, message):
        if message["last"] <= self.covered:
            return  # already read from the log at connect
        if message["prev"] > self.covered:
            # Something for this socket was published after what it has and never reached it.
            await self.send_json({"type": "resync", "after": self.covered})
            await self.catch_up(message["prev"])
        for event in await self.mine([e for e in message["events"] if e["id"] > self.covered]):
            await self.send(text_data=event["text"])
        self.covered = max(self.covered, message["last"])

    async def live_tick(self, message):
        if message["last"] > self.covered:
            await self.send_json({"type": "resync", "after": self.covered})
            await self.catch_up(message["last"])

    async def live_late(self, message):
        # Events whose transaction committed after the relay had given up waiting (see relay).
        for event in await self.mine(message["events"]):
            await self.send(text_data=event["text"])

    async def catch_up(self, upto: int) -> None:
        """Send this socket's events in (covered, upto] from the log, page by page."""
        while self.covered < upto:
            page = await database_sync_to_async(self.read_log)(self.covered, upto)
            for event in page:
                await self.send_json(event)
            self.covered = page[-1]["id"] if len(page) == live.PAGE else upto

    # --- per consumer ------------------------------------------------------------------------

    async def authorize(self, user) -> int | None:
        """A refusal code, or None."""
        return None

    def snapshot(self) -> dict:
        raise NotImplementedError

    def read_log(self, after: int, upto: int) -> list[dict]:
        raise NotImplementedError

    async def mine(self, events: list[dict]) -> list[dict]:
        return events


class RunConsumer(LiveConsumer):
    """ws/executions/{id}/: one run's events."""

    async def authorize(self, user):
        run_id = parse_id(self.scope["url_route"]["kwargs"]["run_id"])
        self.run = None if run_id is None else await database_sync_to_async(live.visible_run)(user, run_id)
        if self.run is None:
            return NOT_FOUND
        self.key = f"run.{self.run.pk}"
        return None

    def snapshot(self) -> dict:
        return live.run_snapshot(self.run)

    def read_log(self, after, upto):
        return live.events_between(after, upto, run_id=self.run.pk)


class DashboardConsumer(LiveConsumer):
    """ws/dashboard/: the events of every run the user may see (runs started later too)."""

    key = "dashboard"

    async def authorize(self, user):
        self.user = user
        self.seen: dict[int, bool] = {}  # run id -> visible to this user
        return None

    def snapshot(self) -> dict:
        return live.dashboard_snapshot(self.user)

    def read_log(self, after, upto):
        return live.events_between(after, upto, user=self.user)

    async def mine(self, events):
        unknown = {e["execution_id"] for e in events if e["execution_id"] is not None} - self.seen.keys()
        if unknown:
            visible = await database_sync_to_async(live.visible_run_ids)(self.user, unknown)
            if len(self.seen) > 10_000:
                self.seen.clear()
            self.seen.update({run_id: run_id in visible for run_id in unknown})
        return [e for e in events if self.seen.get(e["execution_id"], False)]
