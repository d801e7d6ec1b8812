"""Real executions on the demo agent, watched live: SSE from daphne, work done by a qcluster.

A client connected before the execution sees `execution.created` through
`execution.completed` in order; after a disconnect, while more executions run, it
resumes with Last-Event-ID and gets exactly what it missed. The real AgentField SDK
with `enable_event_stream=True` learns of completion from the same stream.
"""

import asyncio
import contextlib
import re
import time

import pytest
import requests
from agentfield.async_config import AsyncConfig
from agentfield.client import AgentFieldClient
from django.db import connections

from devtools.sse import SocketSse, events_only
from devtools.waiting import wait_for, wait_for_async
from observability.models import PlatformEvent

pytestmark = pytest.mark.processes

TERMINAL = ("succeeded", "failed", "cancelled", "timeout")


def submit(base: str, text: str) -> str:
    response = requests.post(
        f"{base}/api/v1/execute/async/analyzer.process", json={"input": {"document": text}}, timeout=5
    )
    assert response.status_code == 202, response.text
    return response.json()["execution_id"]


def finished(base: str, execution_id: str) -> dict | None:
    doc = requests.get(f"{base}/api/v1/executions/{execution_id}", timeout=5).json()
    return doc if doc["status"] in TERMINAL else None


def streams_open(base: str) -> int:
    """SSE and WebSocket streams open on the server, from its metrics (open while no key exists)."""
    found = re.search(r"^agentfield_stream_connections (\S+)$", requests.get(f"{base}/metrics", timeout=5).text, re.M)
    return int(float(found.group(1))) if found else 0


def stream_ids_after(last_id: int, up_to: int) -> list[int]:
    try:
        rows = PlatformEvent.objects.filter(
            id__gt=last_id, id__lte=up_to, source__in=("execution", "webhook")
        ).order_by("id")
        return list(rows.values_list("id", flat=True))
    finally:
        connections.close_all()


@pytest.fixture
def platform(proc_env):
    web = proc_env.daphne()
    proc_env.worker()
    agent = proc_env.demo_agent(web.url)
    wait_for(lambda: requests.get(f"{web.url}/api/v1/nodes/analyzer", timeout=2).ok, timeout=30,
             what=f"demo agent registration\n{agent.log()}")
    return web


def test_sse_sees_an_execution_through_to_completed_then_resumes_exactly(platform):
    web = platform

    async def watch_one():
        sse = await SocketSse(f"{web.url}/api/ui/v1/executions/events").start()
        await sse.subscribed()
        execution_id = await asyncio.to_thread(submit, web.url, "streams are live")

        def completed(frames) -> bool:
            return any(f.event == "execution.completed" and f.json.get("execution_id") == execution_id for f in frames)

        frames = await sse.read_until(completed, timeout=60)
        await sse.close()
        return execution_id, events_only(frames)

    execution_id, frames = asyncio.run(watch_one())
    mine = [f for f in frames if f.json.get("execution_id") == execution_id]
    types = [f.event for f in mine if f.event != "execution.log"]
    assert types[0] == "execution.created" and types[-1] == "execution.completed", types
    assert types.index("execution.started") < types.index("execution.completed")
    ids = [int(f.id) for f in frames]
    assert ids == sorted(set(ids)), "ids increase, each once"
    completed = next(f.json for f in mine if f.event == "execution.completed")
    assert completed["type"] == "execution_completed" and completed["status"] == "succeeded"
    last_seen = ids[-1]

    # Disconnected: two more executions run to completion.
    more = [submit(web.url, f"missed run {i}") for i in range(2)]
    for other in more:
        assert wait_for(lambda other=other: finished(web.url, other), timeout=60)["status"] == "succeeded"

    async def resume():
        sse = await SocketSse(f"{web.url}/api/ui/v1/executions/events", {"Last-Event-ID": str(last_seen)}).start()
        expected = await asyncio.to_thread(stream_ids_after, last_seen, 10**18)
        got = await sse.read_events(len(expected), timeout=60)
        await sse.close()
        return expected, got

    expected, got = asyncio.run(resume())
    got_ids = [int(f.id) for f in got]
    # Everything written meanwhile, in order, no gap, no duplicate; live events may follow.
    assert got_ids[: len(expected)] == expected
    assert got_ids == stream_ids_after(last_seen, got_ids[-1])
    for other in more:
        assert any(f.event == "execution.completed" and f.json["execution_id"] == other for f in got)


async def _sdk_run(base: str) -> tuple[object, object, float]:
    # Polls are 60 s apart after the first, so a result within seconds came by the stream.
    config = AsyncConfig(
        enable_event_stream=True,
        initial_poll_interval=60.0,
        fast_poll_interval=60.0,
        medium_poll_interval=60.0,
        slow_poll_interval=60.0,
        max_poll_interval=60.0,
        batch_poll_interval=60.0,
    )
    client = AgentFieldClient(base_url=base, async_config=config)
    try:
        manager = await client._get_async_execution_manager()
        # The SDK's stream is open on the server before the work starts.
        await asyncio.to_thread(wait_for, lambda: streams_open(base) >= 1, 10, 0.05, "the SDK's stream to connect")
        started = time.monotonic()
        execution_id = await client.execute_async("analyzer.process", {"document": "sdk listens"})
        # Read the SDK's own state rather than wait_for_execution_result: in 0.1.144 that
        # returns as soon as the stream marks the execution succeeded, racing the
        # immediate poll the same event triggers to fetch the result.
        state = manager._executions[execution_id]

        async def result_known() -> bool:
            return state.result is not None

        with contextlib.suppress(TimeoutError):  # judged below, with what the SDK knew
            await wait_for_async(result_known, timeout=30, what="the SDK to learn the result")
        assert manager._event_stream_task is not None and not manager._event_stream_task.done()
        return state.status.value, state.result, time.monotonic() - started
    finally:
        await client.close_async_execution_manager()


def test_agentfield_sdk_event_stream_learns_completion_from_sse(platform):
    status, result, elapsed = asyncio.run(_sdk_run(platform.url))
    assert status == "succeeded", (status, result, elapsed)
    assert result == {"summary": "sdk listens", "words": 2, "document": "sdk listens"}
    assert elapsed < 25, f"the SDK waited {elapsed:.1f}s: it polled instead of reading the stream"


def test_a_client_keys_streams_are_capped_per_process_and_given_back_on_disconnect(proc_env):
    """STREAM_MAX_PER_KEY on a real daphne: the next stream is 429; places come back when clients go away."""
    from agentfield_site.models import ApiKey

    ApiKey.create("ops", ApiKey.Scope.ADMIN)  # keys exist: the API is closed
    raw = ApiKey.create("app", ApiKey.Scope.CLIENT)[1]
    web = proc_env.daphne({"STREAM_MAX_PER_KEY": "2"})
    url = f"{web.url}/api/ui/v1/executions/events"

    def open_stream() -> requests.Response:
        return requests.get(url, headers={"X-API-Key": raw}, stream=True, timeout=10)

    def two_open() -> list[requests.Response] | None:
        """Two streams of the key, once the places of the ones closed before have come back."""
        held = [open_stream(), open_stream()]
        if all(r.status_code == 200 for r in held):
            return held
        for response in held:
            response.close()
        return None

    for _ in range(3):  # the places come back each time the two streams go
        held = wait_for(two_open, timeout=10, interval=0.2, what=f"two places\n{web.log()}")
        refused = open_stream()
        assert refused.status_code == 429 and refused.json()["error"] == "too_many_streams"
        assert refused.headers["Retry-After"] == "5"
        for response in held:
            response.close()
