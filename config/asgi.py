"""ASGI entry point: `daphne config.asgi:application` serves HTTP and websockets.

Websockets pass, outermost first: `OriginGuard` (a foreign Origin is closed with 4403; no
Origin only with a token), the session cookie (AuthMiddlewareStack), `Authorization: Token`
(TokenAuthMiddleware), then the routes of config/routing.py. The live relay that feeds the
consumers starts with the first live socket of the process and stops with the last
(observability/relay.py): daphne sends no ASGI lifespan events to hang it on.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
# The web server keeps its PostgreSQL connections in a pool (no effect on SQLite): see DB_POOL
# in config/settings.py. Set for the settings only: executors it spawns keep one connection.
pool_unset = "TIDEWATCH_DB_POOL" not in os.environ
if pool_unset:
    os.environ["TIDEWATCH_DB_POOL"] = "16"
django_asgi_app = get_asgi_application()  # sets Django up before the routing imports models
if pool_unset:
    del os.environ["TIDEWATCH_DB_POOL"]

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from config.routing import websocket_urlpatterns  # noqa: E402
from config.ws_auth import OriginGuard, TokenAuthMiddleware  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": OriginGuard(AuthMiddlewareStack(TokenAuthMiddleware(URLRouter(websocket_urlpatterns)))),
    }
)
