"""Streamed responses wait while daphne's transport holds too much its client has not read."""

import asyncio
import functools

from agentfield_site.lib.backpressure import Backpressure, unsent_bytes


class FakeTransport:
    """What Twisted's FileDescriptor keeps of what is written and not yet sent."""

    def __init__(self) -> None:
        self.dataBuffer = b""
        self.offset = 0
        self._tempDataLen = 0
        self.disconnected = False


class FakeRequest:
    """daphne's WebRequest: an HTTP request on a channel that has the transport."""

    def __init__(self, transport) -> None:
        self.channel = type("Channel", (), {"transport": transport})()


class FakeServer:
    def __init__(self, transport: FakeTransport) -> None:
        self.transport = transport
        self.sent: list[dict] = []

    async def handle_reply(self, protocol, message) -> None:
        self.sent.append(message)
        if message["type"] in ("http.response.body", "websocket.send"):
            self.transport._tempDataLen += len(message.get("body") or message.get("text") or b"")


def test_unsent_bytes_reads_the_transport_and_its_tls_wrapper():
    transport = FakeTransport()
    transport.dataBuffer, transport.offset, transport._tempDataLen = b"x" * 100, 40, 7
    assert unsent_bytes(transport) == 67
    wrapper = type("TLS", (), {"transport": transport})()
    assert unsent_bytes(wrapper) == 67
    transport.disconnected = True
    assert unsent_bytes(transport) == 0
    assert unsent_bytes(None) == 0


def test_a_stream_waits_while_its_client_does_not_read(settings):
    settings.STREAM_SEND_BUFFER_BYTES = 1000

    async def scenario():
        transport = FakeTransport()
        server = FakeServer(transport)
        protocol = FakeRequest(transport)
        produced = []

        async def app(scope, receive, send):
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for i in range(50):
                produced.append(i)
                await send({"type": "http.response.body", "body": b"e" * 400, "more_body": True})

        task = asyncio.create_task(
            Backpressure(app)({"type": "http"}, None, functools.partial(server.handle_reply, protocol))
        )
        await asyncio.sleep(0.3)
        # A client that reads nothing: the stream stopped once the buffer passed the limit.
        stalled_at = len(produced)
        assert stalled_at <= 5, stalled_at
        assert transport._tempDataLen <= 1000 + 400

        async def client_reads():
            while True:
                transport._tempDataLen = 0
                await asyncio.sleep(0.005)

        reader = asyncio.create_task(client_reads())
        await asyncio.wait_for(task, 5)
        reader.cancel()
        return produced

    assert asyncio.run(scenario()) == list(range(50))


def test_a_socket_frame_waits_too_and_other_servers_send_as_they_are(settings):
    settings.STREAM_SEND_BUFFER_BYTES = 10

    async def scenario():
        transport = FakeTransport()
        server = FakeServer(transport)
        ws_protocol = type("WebSocketProtocol", (), {"transport": transport})()
        transport._tempDataLen = 11

        async def app(scope, receive, send):
            await send({"type": "websocket.send", "text": "x"})

        task = asyncio.create_task(
            Backpressure(app)({"type": "websocket"}, None, functools.partial(server.handle_reply, ws_protocol))
        )
        await asyncio.sleep(0.1)
        assert not task.done() and server.sent == []
        transport.disconnected = True  # a connection that is gone never waits
        await asyncio.wait_for(task, 5)
        assert server.sent == [{"type": "websocket.send", "text": "x"}]

        plain: list[dict] = []

        async def send(message):
            plain.append(message)

        await Backpressure(app)({"type": "websocket"}, None, send)
        assert plain == [{"type": "websocket.send", "text": "x"}]

    asyncio.run(scenario())
