"""WebSocket routes (filled in by the streams work)."""

websocket_urlpatterns: list = []
