"""Streams with real processes: two daphne servers, events written by another process.

A client on each server (SSE on one, WebSocket on the other) sees every event in
order; both disconnect, another process writes more, and each reconnects from its
last id to get exactly the missed events: no gap, no duplicate. Runs on SQLite
(polling) and on PostgreSQL + Redis (channel-layer wake-ups) alike.
"""

import asyncio
import json

import pytest
import websockets
from django.db import connections

from devtools.sse import SocketSse, events_only
from observability.models import PlatformEvent

pytestmark = pytest.mark.processes

PUBLISHER = """
import sys, django
django.setup()
from observability.events import publish
count, prefix = int(sys.argv[1]), sys.argv[2]
for i in range(count):
    publish("execution.updated", execution_id=f"{prefix}{i}", status="running", data={"n": i})
"""


def publish_from_another_process(proc_env, count: int, prefix: str) -> list[int]:
    proc = proc_env.script(f"publisher-{prefix}", ["-c", PUBLISHER, str(count), prefix])
    assert proc.popen.wait(timeout=60) == 0, proc.log()
    return list(PlatformEvent.objects.filter(execution_id__startswith=prefix).order_by("id").values_list("id", flat=True))


async def in_thread(fn, *args):
    """Run blocking ORM work off the event loop, closing that thread's connection after."""

    def call():
        try:
            return fn(*args)
        finally:
            connections.close_all()

    return await asyncio.to_thread(call)


async def ws_frames(ws, count: int, timeout: float = 60) -> list[dict]:
    got: list[dict] = []

    async def loop() -> None:
        while len(got) < count:
            frame = json.loads(await ws.recv())
            if isinstance(frame.get("id"), int):
                got.append(frame)

    await asyncio.wait_for(loop(), timeout)
    return got


def test_two_servers_every_event_then_resume_exactly_the_missed_ones(proc_env):
    web1 = proc_env.daphne()
    web2 = proc_env.daphne()
    ws_url = f"ws://127.0.0.1:{web2.port}/ws/events?types=execution.*"

    async def first_half():
        sse = await SocketSse(f"{web1.url}/api/ui/v1/executions/events?types=execution.updated").start()
        await sse.subscribed()
        ws = await websockets.connect(ws_url, open_timeout=10)
        assert json.loads(await ws.recv())["type"] == "stream.subscribed"
        ids = await in_thread(publish_from_another_process, proc_env, 5, "live")
        sse_frames = await sse.read_events(5)
        ws_got = await ws_frames(ws, 5)
        await sse.close()
        await ws.close()
        return ids, sse_frames, ws_got

    ids, sse_frames, ws_got = asyncio.run(first_half())
    assert [int(f.id) for f in sse_frames] == ids
    assert [f.event for f in sse_frames] == ["execution.updated"] * 5
    assert [f.json["execution_id"] for f in sse_frames] == [f"live{i}" for i in range(5)]
    assert [f["id"] for f in ws_got] == ids
    assert ids == sorted(ids)

    missed = publish_from_another_process(proc_env, 4, "missed")

    async def second_half():
        sse = await SocketSse(
            f"{web1.url}/api/ui/v1/executions/events?types=execution.updated", {"Last-Event-ID": str(ids[-1])}
        ).start()
        ws = await websockets.connect(ws_url, open_timeout=10)
        await ws.recv()
        await ws.send(json.dumps({"action": "subscribe", "filters": {"types": "execution.*"}, "last_event_id": ids[-1]}))
        resumed_sse = await sse.read_events(4)
        resumed_ws = await ws_frames(ws, 4)
        # Then live again on the same connections, written by yet another process.
        later = await in_thread(publish_from_another_process, proc_env, 2, "later")
        live_sse = await sse.read_events(6)
        live_ws = await ws_frames(ws, 2)
        await asyncio.sleep(0.5)
        extra_sse = events_only(sse.parser.frames)[6:]
        await sse.close()
        await ws.close()
        return resumed_sse, resumed_ws, later, live_sse, live_ws, extra_sse

    resumed_sse, resumed_ws, later, live_sse, live_ws, extra_sse = asyncio.run(second_half())
    assert [int(f.id) for f in resumed_sse[:4]] == missed
    assert [f["id"] for f in resumed_ws] == missed
    assert [int(f.id) for f in live_sse] == missed + later
    assert [f["id"] for f in live_ws] == later
    assert extra_sse == []
