"""Backpressure for streamed responses: a stream waits while its client is not reading.

Daphne hands every `send` straight to Twisted, whose transports buffer whatever
they are given and never make the sender wait. An event stream (SSE or the
socket) whose client stopped reading therefore kept producing: every event went
into that connection's write buffer, without bound, and the listener's bounded
queue (`tail.Listener`) never filled, since nothing ever waited. One client key's
ten SSE streams that replayed from `last_event_id=0` and never read held daphne at
3.6 GB (its 1,300 executions' results, ten times over).

`Backpressure` wraps `send`: before each body chunk and each WebSocket frame it
waits while the connection's transport holds more than `STREAM_SEND_BUFFER_BYTES`
unsent. A stream that waits stops reading its listener, which marks itself
lagging once its buffer is full and catches up from the log when the client
reads again: memory per connection stays bounded, and nothing is lost. A
connection that is gone does not wait (its stream is cancelled by the disconnect).

A response that fails after it started (a streamed body whose next part raised:
the node list when the database goes away mid-list) can no longer be answered
500; daphne left such a connection open, the chunked body never ended, and the
client waited for ever. `Backpressure` aborts the connection instead, so the
client sees the answer cut off.

Other servers (and the test client) give no daphne protocol: `send` is left as it is.
"""

import asyncio
import functools

from django.conf import settings

_FIRST_WAIT = 0.01
_LONGEST_WAIT = 0.25
_WAITING_MESSAGES = frozenset({"http.response.body", "websocket.send"})


def _transport(send) -> object | None:
    """The Twisted transport under daphne's `send` (`partial(server.handle_reply, protocol)`), if any."""
    if not isinstance(send, functools.partial) or not send.args:
        return None
    protocol = send.args[0]
    if hasattr(protocol, "channel"):  # daphne's WebRequest: an HTTP request on its HTTPChannel
        channel = protocol.channel
        return None if channel is None else getattr(channel, "transport", None)
    return getattr(protocol, "transport", None)  # daphne's WebSocketProtocol


def unsent_bytes(transport: object | None) -> int:
    """Bytes written to `transport` and not yet handed to the kernel (0 when unknown or gone)."""
    # A TLS transport wraps the TCP one: what waits is in the one at the bottom.
    for _ in range(4):
        if transport is None or getattr(transport, "disconnected", False):
            return 0
        if hasattr(transport, "dataBuffer"):
            try:
                return len(transport.dataBuffer) - transport.offset + transport._tempDataLen
            except (AttributeError, TypeError):
                return 0
        transport = getattr(transport, "transport", None)
    return 0


class Backpressure:
    """ASGI middleware: `send` of a body chunk or a frame waits while the client is behind."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket") or _transport(send) is None:
            return await self.app(scope, receive, send)

        started = False

        async def send_when_drained(message):
            nonlocal started
            started = started or message.get("type") == "http.response.start"
            if message.get("type") in _WAITING_MESSAGES:
                limit = settings.STREAM_SEND_BUFFER_BYTES
                wait = _FIRST_WAIT
                while unsent_bytes(_transport(send)) > limit:
                    await asyncio.sleep(wait)
                    wait = min(wait * 2, _LONGEST_WAIT)
            await send(message)

        try:
            return await self.app(scope, receive, send_when_drained)
        except Exception:
            transport = _transport(send)
            if started and transport is not None:
                transport.abortConnection()
            raise
