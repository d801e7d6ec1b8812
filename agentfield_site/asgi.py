"""ASGI entry point for daphne: HTTP (API, SSE, admin, dashboard) and WebSocket."""

import gc
import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "agentfield_site.settings")
django.setup(set_prefix=False)

from agentfield_site.lib.loop_middleware import LoopASGIHandler  # noqa: E402

django_asgi_app = LoopASGIHandler()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402

from agentfield_site import access_log, content_type_cache, server_refusals, shared_socket  # noqa: E402
from agentfield_site.fast_lane import MemoryLane  # noqa: E402
from agentfield_site.lib.backpressure import Backpressure  # noqa: E402
from agentfield_site.lib.concurrency_limit import ConcurrencyLimit  # noqa: E402
from observability.routing import origin_checked, websocket_urlpatterns  # noqa: E402
from observability.streams import is_stream  # noqa: E402

access_log.install()
server_refusals.install()
shared_socket.install()
content_type_cache.install()

# Backpressure outermost: it needs daphne's own `send` to find the connection.
application = Backpressure(ProtocolTypeRouter(
    {
        # Answers from memory (a heartbeat) need no place among the requests Django works on.
        "http": MemoryLane(ConcurrencyLimit(
            django_asgi_app, settings.MAX_CONCURRENT_REQUESTS, settings.REQUEST_QUEUE_TIMEOUT or None, unlimited=is_stream
        )),
        "websocket": origin_checked(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
))

# Everything loaded so far lives as long as the process: keep it out of the cyclic
# collector's full passes, which otherwise stall the event loop (and every open
# stream) for tens of milliseconds once a thousand connections are open.
gc.freeze()
