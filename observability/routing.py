"""WebSocket routes, and the origin rule that guards cookie-authenticated sockets."""

from urllib.parse import urlsplit

from channels.generic.websocket import WebsocketConsumer
from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import validate_host
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


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin_of(scheme: str, netloc: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) with the default port filled in; None when unusable."""
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        port = parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:
        return None
    if scheme not in _DEFAULT_PORTS or not parts.hostname or port is None:
        return None
    return scheme, parts.hostname.lower(), port


def _forwarded_https(headers: dict[bytes, bytes]) -> bool:
    """Behind a TLS proxy trusted the way Django trusts it (SECURE_PROXY_SSL_HEADER)."""
    trusted = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if not trusted:
        return False
    name, value = trusted
    header = name.removeprefix("HTTP_").replace("_", "-").lower().encode("latin1")
    return headers.get(header, b"").decode("latin1").strip() == value


class SameOriginValidator:
    """Refuse browser sockets from any other origin; let programs without an Origin through.

    A browser always sends Origin on a WebSocket, so a foreign page cannot ride on a
    staff session cookie. The Origin must be this server's own (scheme, host and
    port, as the request's Host names it, with a host in ALLOWED_HOSTS so a
    rebinding DNS name does not pass) or one listed in ALLOWED_ORIGINS. Programs
    (the SDK, CLIs) send no Origin and authenticate with an API key, which the
    consumer checks.
    """

    def __init__(self, application) -> None:
        self.application = application

    async def __call__(self, scope, receive, send):
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        if b"origin" not in headers or self.allowed(scope, headers):
            return await self.application(scope, receive, send)
        return await WebsocketDenier()(scope, receive, send)

    @staticmethod
    def allowed(scope: dict, headers: dict[bytes, bytes]) -> bool:
        raw = headers[b"origin"].decode("latin1").strip()
        parts = urlsplit(raw)
        origin = _origin_of(parts.scheme.lower(), parts.netloc) if not parts.path.strip("/") else None
        if origin is None:
            return False
        if origin in {_origin_of(*urlsplit(o.strip())[:2]) for o in settings.ALLOWED_ORIGINS}:
            return True
        scheme = "https" if scope.get("scheme") in ("wss", "https") or _forwarded_https(headers) else "http"
        host = headers.get(b"host", b"").decode("latin1")
        name = f"[{origin[1]}]" if ":" in origin[1] else origin[1]  # ALLOWED_HOSTS writes IPv6 bracketed
        return origin == _origin_of(scheme, host) and validate_host(name, settings.ALLOWED_HOSTS)


def origin_checked(application):
    """Wrap the WebSocket app: a browser's Origin must be this server's own (or allowed)."""
    return SameOriginValidator(application)
