"""WebSocket routes, and the origin rule that guards cookie-authenticated sockets."""

from channels.generic.websocket import WebsocketConsumer
from channels.security.websocket import OriginValidator
from django.conf import settings
from django.urls import path, re_path

from .consumers import EventStreamConsumer


class NoSuchSocket(WebsocketConsumer):
    """Any other WebSocket path: refused at the handshake (HTTP 403), never a 500.

    The AgentField SDK probes `/api/v1/memory/events/ws` at start; the memory API is
    out of scope, and the SDK runs on when the probe is refused.
    """

    def connect(self) -> None:
        self.close()


websocket_urlpatterns = [
    path("ws/events", EventStreamConsumer.as_asgi()),
    re_path(r"", NoSuchSocket.as_asgi()),
]


class BrowserOriginValidator(OriginValidator):
    """Refuse browser sockets from other sites; let programs without an Origin through.

    A browser always sends Origin on a WebSocket, so a foreign page cannot ride on a
    staff session cookie. Programs (the SDK, CLIs) send no Origin and authenticate
    with an API key, which the consumer checks.
    """

    def valid_origin(self, parsed_origin) -> bool:
        if parsed_origin is None:
            return True
        return self.validate_origin(parsed_origin)


def origin_checked(application):
    """Wrap the WebSocket app: Origin must match ALLOWED_HOSTS when present."""
    return BrowserOriginValidator(application, settings.ALLOWED_HOSTS)
