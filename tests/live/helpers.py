"""Websocket clients for the live tests: channels' WebsocketCommunicator against the real
ASGI application (origin guard, session and token auth, routing)."""

from __future__ import annotations

import asyncio
import json

from channels.testing import WebsocketCommunicator
from django.test import Client

ORIGIN = b"http://127.0.0.1"


def session_cookie(user) -> bytes:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


def headers(*, cookie: bytes | None = None, token: str | None = None, origin: bytes | None = ORIGIN):
    found = []
    if origin is not None:
        found.append((b"origin", origin))
    if cookie is not None:
        found.append((b"cookie", cookie))
    if token is not None:
        found.append((b"authorization", f"Token {token}".encode()))
    return found


async def open_socket(path: str, **kwargs) -> WebsocketCommunicator:
    from config.asgi import application

    communicator = WebsocketCommunicator(application, path, headers=headers(**kwargs))
    connected, _ = await communicator.connect(timeout=10)
    assert connected
    return communicator


async def close_code(communicator: WebsocketCommunicator, timeout: float = 5) -> int | None:
    """The code the server closed with (it accepts, then closes, to send one)."""
    message = await communicator.receive_output(timeout)
    assert message["type"] == "websocket.close", message
    await communicator.disconnect()  # as the client would: the consumer ends
    return message.get("code")


async def receive(communicator: WebsocketCommunicator, timeout: float = 5) -> dict:
    message = await communicator.receive_output(timeout)
    assert message["type"] == "websocket.send", message
    return json.loads(message["text"])


async def receive_until(communicator, done, timeout: float = 10) -> list[dict]:
    """Messages until `done(messages)` holds."""
    got: list[dict] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while not done(got):
        left = deadline - asyncio.get_running_loop().time()
        assert left > 0, f"timed out after {len(got)} messages: {got[-3:]}"
        got.append(await receive(communicator, left))
    return got


async def nothing_more(communicator, timeout: float = 0.3) -> bool:
    return await communicator.receive_nothing(timeout)
