"""Websocket routes: the live consumers (observability.consumers), then a catch-all that
closes any other path with 4404 (without it the router raises and the handshake is a 500)."""

from django.urls import path, re_path

from observability.consumers import DashboardConsumer, Refuse, RunConsumer

websocket_urlpatterns: list = [
    path("ws/executions/<str:run_id>/", RunConsumer.as_asgi()),
    path("ws/dashboard/", DashboardConsumer.as_asgi()),
    re_path(r"", Refuse.as_asgi()),
]
