"""The Redis channel layer the stream tails wake up on (PostgreSQL + Redis runs)."""

import asyncio

import pytest
from channels.layers import get_channel_layer
from django.conf import settings

pytestmark = pytest.mark.skipif(not settings.REDIS_URL, reason="needs REDIS_URL (the channel layer)")


def test_an_idle_wake_up_channel_waits_without_failing():
    # redis-py 8 times a socket read out after 5 s, and channels_redis blocks 5 s on
    # BZPOPMIN: every idle tail's wake-up listener failed every 6 s, logged a traceback
    # and fell back to polling.
    async def wait() -> None:
        layer = get_channel_layer()
        channel = await layer.new_channel("test-idle.")
        try:
            await asyncio.wait_for(layer.receive(channel), 6.5)
        except TimeoutError as exc:  # wait_for's, and only that: redis-py's is not a TimeoutError
            assert type(exc) is TimeoutError
        else:
            pytest.fail("nothing was sent, yet a message came")

    asyncio.run(wait())
