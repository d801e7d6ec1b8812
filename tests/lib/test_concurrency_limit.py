"""ConcurrencyLimit: at most `limit` requests inside at once, first come first served.

The wrapped application here is a small ASGI app that records who is inside;
that the real daphne serves 200 clients with it is the load bench's job
(docs/reliability.md).
"""

import asyncio
import json
from types import SimpleNamespace

import pytest
from django.core import checks
from django.test import override_settings

from agentfield_site.apps import check_settings
from agentfield_site.lib.concurrency_limit import ConcurrencyLimit, lend_place


class Recorder:
    """An ASGI app that holds each request until told, and records the peak inside."""

    def __init__(self) -> None:
        self.inside = 0
        self.peak = 0
        self.entered: list[str] = []
        self.release = asyncio.Event()

    async def __call__(self, scope, receive, send) -> None:
        self.inside += 1
        self.peak = max(self.peak, self.inside)
        self.entered.append(scope["path"])
        try:
            await self.release.wait()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
        finally:
            self.inside -= 1


def http(path: str) -> dict:
    return {"type": "http", "path": path}


async def _noop_receive():
    return {"type": "http.request", "body": b""}


def _sink(out: list):
    async def send(message) -> None:
        out.append(message)

    return send


def test_no_more_than_limit_inside_and_the_rest_in_arrival_order():
    async def scenario():
        app = Recorder()
        limited = ConcurrencyLimit(app, limit=3)
        sent: list = []
        tasks = [asyncio.create_task(limited(http(f"/{i}"), _noop_receive, _sink(sent))) for i in range(10)]
        for _ in range(20):
            await asyncio.sleep(0)
        assert app.inside == 3
        assert app.entered == ["/0", "/1", "/2"]
        app.release.set()
        await asyncio.gather(*tasks)
        return app, sent

    app, sent = asyncio.run(scenario())
    assert app.peak == 3
    assert app.entered == [f"/{i}" for i in range(10)]
    assert sum(m["type"] == "http.response.body" for m in sent) == 10


def test_a_stream_gives_its_place_back_when_its_response_starts():
    async def scenario():
        hang_up = asyncio.Event()

        async def app(scope, receive, send):
            await send({"type": "http.response.start", "status": 200, "headers": []})
            if scope["path"] == "/stream":
                await hang_up.wait()  # an SSE client that stays connected
            await send({"type": "http.response.body", "body": b""})

        limited = ConcurrencyLimit(app, limit=1)
        sent: list = []
        stream = asyncio.create_task(limited(http("/stream"), _noop_receive, _sink(sent)))
        await asyncio.sleep(0)
        await asyncio.wait_for(limited(http("/api"), _noop_receive, _sink(sent)), timeout=5)
        hang_up.set()
        await stream
        return sent

    sent = asyncio.run(scenario())
    assert [m["type"] for m in sent].count("http.response.start") == 2


def test_a_failing_request_gives_its_place_back():
    async def scenario():
        async def app(scope, receive, send):
            if scope["path"] == "/boom":
                raise RuntimeError("boom")
            await send({"type": "http.response.start", "status": 204, "headers": []})

        limited = ConcurrencyLimit(app, limit=1)
        with pytest.raises(RuntimeError):
            await limited(http("/boom"), _noop_receive, _sink([]))
        sent: list = []
        await asyncio.wait_for(limited(http("/after"), _noop_receive, _sink(sent)), timeout=5)
        return sent

    assert asyncio.run(scenario())[0]["status"] == 204


def test_websockets_and_lifespan_pass_through_without_a_place():
    async def scenario():
        app = Recorder()
        limited = ConcurrencyLimit(app, limit=1)
        held = asyncio.create_task(limited(http("/held"), _noop_receive, _sink([])))
        await asyncio.sleep(0)
        socket = asyncio.create_task(limited({"type": "websocket", "path": "/ws/events"}, _noop_receive, _sink([])))
        for _ in range(5):
            await asyncio.sleep(0)
        inside = app.inside
        app.release.set()
        await asyncio.gather(held, socket)
        return inside

    assert asyncio.run(scenario()) == 2


def test_limit_below_one_is_refused():
    with pytest.raises(ValueError):
        ConcurrencyLimit(Recorder(), limit=0)
    with override_settings(MAX_CONCURRENT_REQUESTS=0):
        assert "agentfield.E005" in [m.id for m in check_settings(None) if m.level >= checks.ERROR]


def test_a_waiting_request_lends_its_place_and_queues_for_one_to_answer():
    """What the sync execute does while its agent works: others get in; it answers in turn."""

    async def scenario():
        agent_done = asyncio.Event()
        order: list[str] = []

        async def app(scope, receive, send):
            request = SimpleNamespace(scope=scope)
            if scope["path"] == "/sync":
                async with lend_place(request):
                    order.append("sync waits")
                    await agent_done.wait()
                order.append("sync answers")
            else:
                order.append(f"{scope['path']} served")
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        limited = ConcurrencyLimit(app, limit=1)
        sync = asyncio.create_task(limited(http("/sync"), _noop_receive, _sink([])))
        await asyncio.sleep(0)
        await asyncio.wait_for(limited(http("/health"), _noop_receive, _sink([])), timeout=5)
        # The place is taken by a slow request when the wait ends: the sync one queues behind it.
        slow_release = asyncio.Event()

        async def slow(scope, receive, send):
            await slow_release.wait()
            await app(scope, receive, send)

        limited.app = slow
        other = asyncio.create_task(limited(http("/slow"), _noop_receive, _sink([])))
        await asyncio.sleep(0)
        agent_done.set()
        for _ in range(10):
            await asyncio.sleep(0)
        assert "sync answers" not in order, "the sync request waits for a place to answer"
        slow_release.set()
        await asyncio.wait_for(asyncio.gather(sync, other), timeout=5)
        return order

    assert asyncio.run(scenario()) == ["sync waits", "/health served", "/slow served", "sync answers"]


def test_lending_outside_the_limit_is_a_no_op():
    async def scenario():
        async with lend_place(SimpleNamespace()):
            return True

    assert asyncio.run(scenario())


def test_a_request_that_waited_past_the_queue_timeout_gets_503_with_retry_after():
    async def scenario():
        app = Recorder()
        limited = ConcurrencyLimit(app, limit=1, queue_timeout=0.05)
        held = asyncio.create_task(limited(http("/held"), _noop_receive, _sink([])))
        await asyncio.sleep(0)
        refused: list = []
        await asyncio.wait_for(limited(http("/late"), _noop_receive, _sink(refused)), timeout=5)
        app.release.set()
        await held
        after: list = []
        await asyncio.wait_for(limited(http("/after"), _noop_receive, _sink(after)), timeout=5)
        return app, refused, after

    app, refused, after = asyncio.run(scenario())
    start, body = refused
    assert start["status"] == 503
    headers = dict(start["headers"])
    assert headers[b"retry-after"] == b"1" and headers[b"content-type"] == b"application/json"
    assert json.loads(body["body"])["error"] == "overloaded"
    assert app.entered == ["/held", "/after"], "the refused request never reached the app"
    assert after[0]["status"] == 200, "the refused request took no place with it"


def test_streams_pass_without_queueing_for_a_place():
    async def scenario():
        app = Recorder()
        limited = ConcurrencyLimit(app, limit=1, queue_timeout=0.05, unlimited=lambda scope: scope["path"] == "/events")
        held = asyncio.create_task(limited(http("/held"), _noop_receive, _sink([])))
        stream = asyncio.create_task(limited(http("/events"), _noop_receive, _sink([])))
        for _ in range(5):
            await asyncio.sleep(0)
        inside = app.inside
        await asyncio.sleep(0.1)  # past the queue timeout: the stream was never queued
        app.release.set()
        await asyncio.gather(held, stream)
        return inside

    assert asyncio.run(scenario()) == 2


@pytest.mark.django_db
def test_the_event_streams_are_the_unlimited_routes():
    from observability.streams import is_stream

    def get(path: str) -> dict:
        return {"type": "http", "method": "GET", "path": path}

    assert is_stream(get("/api/ui/v1/executions/events"))
    assert is_stream(get("/api/ui/v1/nodes/events"))
    assert is_stream(get("/api/v1/executions/exec_1/events"))
    assert not is_stream({**get("/api/v1/workflow/executions/events"), "method": "POST"})
    assert not is_stream(get("/api/v1/executions/exec_1"))
    assert not is_stream(get("/api/v1/nope/events"))
