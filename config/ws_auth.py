"""Who is on the other end of a websocket, and whether the socket may be opened at all.

- `TokenAuthMiddleware`: a socket that sends `Authorization: Token <key>` (a script; a browser
  cannot set that header on a websocket) is that token's user, whatever cookies it also sends;
  a wrong or malformed header, or an inactive user, is anonymous (and refused with 4401).
  Without the header the session cookie decides (channels' AuthMiddlewareStack).
- `OriginGuard`: a socket whose `Origin` is not one of ALLOWED_HOSTS is refused with 4403 (its
  cookies must not be usable by another site). A socket with no `Origin` at all is let through
  only when it authenticates by token: channels' own AllowedHostsOriginValidator refuses those,
  and answers with a bare HTTP 403 during the handshake where this one closes with a code.
"""

from __future__ import annotations

from urllib.parse import urlparse

from channels.db import database_sync_to_async
from channels.middleware import BaseMiddleware
from channels.security.websocket import OriginValidator
from django.conf import settings
from django.contrib.auth.models import AnonymousUser


def _header(scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value
    return None


@database_sync_to_async
def user_for_token(header: bytes):
    from rest_framework.authtoken.models import Token

    parts = header.decode("latin1").split()
    if len(parts) != 2 or parts[0].lower() != "token":
        return AnonymousUser()
    token = Token.objects.select_related("user").filter(key=parts[1]).first()
    if token is None or not token.user.is_active:
        return AnonymousUser()
    return token.user


class TokenAuthMiddleware(BaseMiddleware):
    """Sets scope["user"] from an `Authorization: Token <key>` header (inside AuthMiddlewareStack)."""

    async def __call__(self, scope, receive, send):
        header = _header(scope, b"authorization")
        if header is not None:
            scope = dict(scope, user=await user_for_token(header), auth="token")
        return await super().__call__(scope, receive, send)


class OriginGuard(OriginValidator):
    """ALLOWED_HOSTS as allowed origins; refusals close with 4403."""

    def __init__(self, application):
        hosts = settings.ALLOWED_HOSTS
        if settings.DEBUG and not hosts:
            hosts = ["localhost", "127.0.0.1", "[::1]"]
        super().__init__(application, hosts)

    async def __call__(self, scope, receive, send):
        origin = _header(scope, b"origin")
        if origin is None:
            allowed = _header(scope, b"authorization") is not None or "*" in self.allowed_origins
        else:
            try:
                allowed = self.valid_origin(urlparse(origin.decode("latin1")))
            except (UnicodeDecodeError, ValueError):
                allowed = False
        if allowed:
            return await self.application(scope, receive, send)
        from observability.consumers import NOT_ALLOWED, Refuse

        return await Refuse.as_asgi(code=NOT_ALLOWED)(scope, receive, send)
