import asyncio

from channels.testing import WebsocketCommunicator

from agentfield_site.asgi import application


def test_unknown_websocket_path_is_refused_not_an_error():
    """The SDK's memory probe gets a refused handshake, not a server error."""

    async def probe() -> bool:
        communicator = WebsocketCommunicator(application, "/api/v1/memory/events/ws")
        connected, _ = await communicator.connect()
        await communicator.disconnect()
        return connected

    assert asyncio.run(probe()) is False
