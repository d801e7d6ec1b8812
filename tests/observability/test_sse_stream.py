"""SSE in process: the wire format, filters, resume without gaps, reset, auth, the per-execution stream."""

import asyncio
import json

import pytest
from django.contrib.auth.models import User
from django.db import connections
from django.test import Client

from agentfield_site.asgi import application
from devtools.sse import AsgiSse
from observability import events, tail
from observability.models import PlatformEvent
from observability.stream_filters import parse_filters

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("poll_without_channel_layer")]


@pytest.fixture(autouse=True)
def _release_stream_connections():
    yield
    tail.close_pool_connections()


def publish_in_thread(*specs: tuple[str, dict]) -> list[int]:
    """Publish from another thread (as another request or a worker would), one commit each."""

    def write() -> list[int]:
        try:
            return [events.publish(kind, **fields).id for kind, fields in specs]
        finally:
            connections.close_all()

    return asyncio.to_thread(write)


def run(coro):
    return asyncio.run(coro)


def test_format_headers_and_underscore_type(settings):
    async def scenario():
        sse = await AsgiSse(application, "/api/ui/v1/executions/events").start()
        await sse.read_until(lambda fs: any(f.retry for f in fs))
        ids = await publish_in_thread(
            ("execution.created", {"execution_id": "exec_a", "workflow_id": "run_1", "agent_node_id": "analyzer", "status": "pending", "data": {"target": "analyzer.process"}}),
            ("execution.started", {"execution_id": "exec_a", "status": "running"}),
        )
        frames = await sse.read_events(2)
        await sse.close()
        return sse, frames, ids

    sse, frames, ids = run(scenario())
    assert sse.status == 200
    assert sse.headers["content-type"] == "text/event-stream"
    assert sse.headers["cache-control"] == "no-cache"
    assert sse.headers["x-accel-buffering"] == "no"
    assert sse.body.startswith(b"retry: 3000\n\n")
    assert [int(f.id) for f in frames] == ids
    assert [f.event for f in frames] == ["execution.created", "execution.started"]
    first = frames[0].json
    assert first["type"] == "execution_created"
    assert first["id"] == ids[0]
    assert first["execution_id"] == "exec_a"
    assert first["workflow_id"] == "run_1"
    assert first["agent_node_id"] == "analyzer"
    assert first["status"] == "pending"
    assert first["data"] == {"target": "analyzer.process"}
    assert first["timestamp"].endswith("Z")
    # One line per field: the SDK splits on blank lines and reads `data:` lines.
    assert b"\r" not in sse.body


def test_keep_alive_comment_when_idle(settings):
    settings.STREAM_KEEPALIVE_SECONDS = 0.2

    async def scenario():
        sse = await AsgiSse(application, "/api/ui/v1/executions/events").start()
        frames = await sse.read_until(lambda fs: sum(f.comment == "keep-alive" for f in fs) >= 2, timeout=5)
        await sse.close()
        return sse, frames

    sse, frames = run(scenario())
    assert b": keep-alive\n\n" in sse.body


def test_filters_and_scopes():
    specs = [
        ("execution.created", {"execution_id": "e1", "workflow_id": "w1", "agent_node_id": "a", "status": "pending"}),
        ("node.online", {"agent_node_id": "a"}),
        ("execution.completed", {"execution_id": "e1", "workflow_id": "w1", "agent_node_id": "a", "status": "succeeded"}),
        ("execution.created", {"execution_id": "e2", "workflow_id": "w2", "agent_node_id": "b", "status": "pending"}),
        ("webhook.delivered", {"execution_id": "e1", "status": "delivered"}),
        ("execution.failed", {"execution_id": "e2", "workflow_id": "w2", "agent_node_id": "b", "status": "failed"}),
    ]

    start: list[int] = []

    async def collect(path: str, query: str, expected: int) -> list[str]:
        sse = await AsgiSse(application, path, query, {"Last-Event-ID": str(start[0] - 1)}).start()
        await sse.read_events(expected)
        # Give a wrongly matching event a moment to show up before judging.
        await asyncio.sleep(0.3)
        await sse.close()
        return [f"{f.event}:{f.json.get('execution_id', f.json.get('agent_node_id'))}" for f in sse.parser.frames if f.data]

    async def scenario():
        start.extend(await publish_in_thread(*specs))
        return {
            "all": await collect("/api/ui/v1/executions/events", "", 5),
            "exec": await collect("/api/ui/v1/executions/events", "execution_id=e1", 3),
            "workflow": await collect("/api/ui/v1/executions/events", "workflow_id=w2", 2),
            "node": await collect("/api/ui/v1/executions/events", "agent_node_id=b", 2),
            "status": await collect("/api/ui/v1/executions/events", "status=pending", 2),
            "types": await collect("/api/ui/v1/executions/events", "types=execution.completed,webhook.*", 2),
            "wild": await collect("/api/ui/v1/executions/events", "types=execution.*ed", 4),
            "nodes": await collect("/api/ui/v1/nodes/events", "", 1),
        }

    got = run(scenario())
    assert got["all"] == [
        "execution.created:e1", "execution.completed:e1", "execution.created:e2",
        "webhook.delivered:e1", "execution.failed:e2",
    ]
    assert got["exec"] == ["execution.created:e1", "execution.completed:e1", "webhook.delivered:e1"]
    assert got["workflow"] == ["execution.created:e2", "execution.failed:e2"]
    assert got["node"] == ["execution.created:e2", "execution.failed:e2"]
    assert got["status"] == ["execution.created:e1", "execution.created:e2"]
    assert got["types"] == ["execution.completed:e1", "webhook.delivered:e1"]
    assert got["wild"] == ["execution.created:e1", "execution.completed:e1", "execution.created:e2", "execution.failed:e2"]
    assert got["nodes"] == ["node.online:a"]


def test_resume_replays_then_goes_live_without_gap_or_duplicate():
    async def scenario():
        first = await publish_in_thread(*[("execution.updated", {"execution_id": f"r{i}"}) for i in range(5)])
        # Resume from the middle, by header; more events land while it replays.
        sse = await AsgiSse(application, "/api/ui/v1/executions/events", "", {"Last-Event-ID": str(first[1])}).start()
        more = await publish_in_thread(*[("execution.updated", {"execution_id": f"s{i}"}) for i in range(5)])
        await sse.read_events(8)
        await asyncio.sleep(0.3)
        await sse.close()
        by_query = await AsgiSse(application, "/api/ui/v1/executions/events", f"last_event_id={more[2]}").start()
        tail_frames = await by_query.read_events(2)
        await by_query.close()
        return first, more, [int(f.id) for f in sse.parser.frames if f.data], [int(f.id) for f in tail_frames]

    first, more, ids, tail_ids = run(scenario())
    assert ids == first[2:] + more
    assert tail_ids == more[3:]


def test_resume_point_older_than_retention_sends_stream_reset():
    async def scenario():
        ids = await publish_in_thread(*[("execution.updated", {"execution_id": f"p{i}"}) for i in range(6)])
        await asyncio.to_thread(lambda: (PlatformEvent.objects.filter(id__lte=ids[2]).delete(), connections.close_all()))
        sse = await AsgiSse(application, "/api/ui/v1/executions/events", "", {"Last-Event-ID": str(ids[0])}).start()
        frames = await sse.read_events(4)
        await sse.close()
        return ids, frames

    ids, frames = run(scenario())
    reset = frames[0]
    assert reset.event == "stream.reset"
    assert reset.json["type"] == "stream_reset"
    assert reset.json["data"]["last_event_id"] == ids[0]
    assert [int(f.id) for f in frames[1:]] == ids[3:]


def test_auth_key_header_query_and_staff_session(settings):
    settings.API_KEYS = ["k-streams"]
    staff = User.objects.create_user("ops", password="pw-ops-12345", is_staff=True)
    User.objects.create_user("joe", password="pw-joe-12345")

    async def status(query: str = "", headers: dict | None = None) -> tuple[int, bytes]:
        sse = await AsgiSse(application, "/api/ui/v1/executions/events", query, headers).start()
        if sse.status == 200:
            await sse.read_until(lambda fs: any(f.retry for f in fs))
        else:
            await sse.read_to_end()
        await sse.close()
        return sse.status, sse.body

    def cookie_for(user) -> str:
        client = Client()
        client.force_login(user)
        return f"sessionid={client.cookies['sessionid'].value}"

    staff_cookie = cookie_for(staff)
    plain_cookie = cookie_for(User.objects.get(username="joe"))

    async def scenario():
        return {
            "none": await status(),
            "bad": await status("api_key=wrong"),
            "query": await status("api_key=k-streams"),
            "header": await status("", {"X-API-Key": "k-streams"}),
            "bearer": await status("", {"Authorization": "Bearer k-streams"}),
            "staff": await status("", {"Cookie": staff_cookie}),
            "plain": await status("", {"Cookie": plain_cookie}),
        }

    got = run(scenario())
    assert got["none"][0] == 401
    assert json.loads(got["none"][1]) == {"error": "unauthorized", "message": json.loads(got["none"][1])["message"]}
    assert got["bad"][0] == 401
    assert got["plain"][0] == 401
    for name in ("query", "header", "bearer", "staff"):
        assert got[name][0] == 200, name


def test_bad_parameters_are_400_json():
    async def scenario():
        out = {}
        too_many = "types=" + ",".join(f"execution.t{i}" for i in range(51))
        for query in ("last_event_id=abc", "last_event_id=-4", "types=EXEC%20x", "execution_id=" + "x" * 200, too_many):
            sse = await AsgiSse(application, "/api/ui/v1/executions/events", query).start()
            await sse.read_to_end()
            out[query] = (sse.status, json.loads(sse.body))
        return out

    for query, (status, body) in run(scenario()).items():
        assert status == 400, query
        assert body["error"] == "bad_request" and body["message"], query


def test_one_execution_stream_replays_and_ends_after_terminal():
    async def scenario():
        ids = await publish_in_thread(
            ("execution.created", {"execution_id": "exec_one", "status": "pending"}),
            ("execution.created", {"execution_id": "exec_other", "status": "pending"}),
            ("execution.started", {"execution_id": "exec_one", "status": "running"}),
        )
        sse = await AsgiSse(application, "/api/v1/executions/exec_one/events").start()
        await sse.read_events(2)
        done = await publish_in_thread(
            ("execution.completed", {"execution_id": "exec_one", "status": "succeeded", "data": {"result": {"ok": True}}}),
            ("webhook.delivered", {"execution_id": "exec_one", "status": "delivered"}),
        )
        frames = await sse.read_to_end()
        resumed = await AsgiSse(application, "/api/v1/executions/exec_one/events", "", {"Last-Event-ID": str(ids[0])}).start()
        resumed_frames = await resumed.read_to_end()
        finished = await AsgiSse(application, "/api/v1/executions/exec_one/events", f"last_event_id={done[0]}").start()
        await finished.read_to_end()
        missing = await AsgiSse(application, "/api/v1/executions/exec_nope/events").start()
        await missing.read_to_end()
        return ids, done, frames, resumed_frames, finished, missing

    ids, done, frames, resumed_frames, finished, missing = run(scenario())
    assert [int(f.id) for f in frames if f.data] == [ids[0], ids[2], done[0]]
    assert [f.event for f in frames if f.data][-1] == "execution.completed"
    assert [int(f.id) for f in resumed_frames if f.data] == [ids[2], done[0]]
    assert finished.status == 204
    assert missing.status == 404
    assert json.loads(missing.body)["error"] == "not_found"


def test_a_status_filter_takes_aliases_and_refuses_a_status_no_event_carries():
    client = Client()
    path = "/api/ui/v1/executions/events"
    refused = client.get(path, {"status": "bogus"})
    assert refused.status_code == 400 and "Unknown status 'bogus'" in refused.json()["message"]
    # Statuses of every kind of event are taken: an execution's, a node's, a delivery's, a breaker's.
    for status in ("succeeded", "inactive", "retrying", "half_open"):
        assert parse_filters({"status": status}).status == status
    assert parse_filters({"status": "Completed"}).status == "succeeded"
    assert parse_filters({"status": "canceled"}).status == "cancelled"

    async def scenario():
        first = await publish_in_thread(
            ("execution.completed", {"execution_id": "e1", "status": "succeeded"}),
            ("execution.failed", {"execution_id": "e2", "status": "failed"}),
        )
        sse = await AsgiSse(application, path, "status=completed", {"Last-Event-ID": str(first[0] - 1)}).start()
        await sse.read_events(1)
        await asyncio.sleep(0.3)
        await sse.close()
        return [f.json["execution_id"] for f in sse.parser.frames if f.data]

    assert run(scenario()) == ["e1"]
