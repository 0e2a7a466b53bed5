"""Websocket routes. The live consumers (ws/executions/{id}/, ws/dashboard/) join here."""

websocket_urlpatterns: list = []
