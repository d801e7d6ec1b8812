"""WebSocket /ws/events in process: documents as frames, subscribe messages, resume, auth, origin."""

import asyncio
import json

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.db import connections
from django.test import Client

from agentfield_site.asgi import application
from observability import events, tail

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("poll_without_channel_layer")]


@pytest.fixture(autouse=True)
def _release_stream_connections():
    yield
    tail.close_pool_connections()
    # Channels' AuthMiddleware reads the session on asgiref's shared sync thread.
    asyncio.run(sync_to_async(connections.close_all)())


def publish(*specs: tuple[str, dict]) -> list[int]:
    try:
        return [events.publish(kind, **fields).id for kind, fields in specs]
    finally:
        connections.close_all()


async def frames_until(ws: WebsocketCommunicator, done, timeout: float = 10) -> list[dict]:
    got: list[dict] = []
    while not done(got):
        got.append(json.loads(await ws.receive_from(timeout)))
    return got


def only_events(frames: list[dict]) -> list[dict]:
    return [f for f in frames if isinstance(f.get("id"), int) and f["type"] != "stream.reset"]


def test_documents_as_frames_then_resubscribe_with_filters_and_resume():
    async def scenario():
        ws = WebsocketCommunicator(application, "/ws/events")
        connected, _ = await ws.connect()
        assert connected
        hello = json.loads(await ws.receive_from(5))
        assert hello["type"] == "stream.subscribed"
        ids = await asyncio.to_thread(
            publish,
            ("execution.created", {"execution_id": "w1", "status": "pending", "data": {"target": "a.b"}}),
            ("node.online", {"agent_node_id": "n1"}),
            ("execution.completed", {"execution_id": "w1", "status": "succeeded"}),
        )
        live = await frames_until(ws, lambda fs: len(fs) >= 3)
        # Resubscribe from the first id with a type filter: the replay, filtered.
        await ws.send_json_to({"action": "subscribe", "filters": {"types": "execution.*"}, "last_event_id": ids[0]})
        resub = await frames_until(ws, lambda fs: len(only_events(fs)) >= 1)
        more = await asyncio.to_thread(publish, ("node.offline", {"agent_node_id": "n1"}), ("execution.failed", {"execution_id": "w2", "status": "failed"}))
        after = await frames_until(ws, lambda fs: len(fs) >= 1)
        await ws.send_to(text_data="not json")
        bad_json = json.loads(await ws.receive_from(5))
        await ws.send_json_to({"action": "subscribe", "filters": {"types": "NOT VALID"}})
        bad_filter = json.loads(await ws.receive_from(5))
        await ws.send_json_to({"action": "dance"})
        bad_action = json.loads(await ws.receive_from(5))
        not_objects = []
        for filters in ([], "", 0, False):  # falsy, and still not an object
            await ws.send_json_to({"action": "subscribe", "filters": filters})
            not_objects.append(json.loads(await ws.receive_from(5)))
        await ws.disconnect()
        return ids, live, resub, more, after, bad_json, bad_filter, bad_action, not_objects

    ids, live, resub, more, after, bad_json, bad_filter, bad_action, not_objects = asyncio.run(scenario())
    assert [f["id"] for f in live] == ids
    assert [f["type"] for f in live] == ["execution.created", "node.online", "execution.completed"]
    assert live[0]["data"] == {"target": "a.b"} and live[0]["source"] == "execution"
    assert resub[0]["type"] == "stream.subscribed"
    assert [f["id"] for f in only_events(resub)] == [ids[2]]
    assert [f["id"] for f in after] == [more[1]]
    assert bad_json["error"] == "invalid_json"
    assert bad_filter["error"] == "bad_request" and "NOT VALID".lower() in bad_filter["message"]
    assert bad_action["error"] == "bad_request"
    assert [(f["error"], f["message"]) for f in not_objects] == [("bad_request", "filters must be an object.")] * 4


def test_resume_from_query_parameters():
    async def scenario():
        ids = await asyncio.to_thread(publish, *[("execution.updated", {"execution_id": f"q{i}"}) for i in range(4)])
        ws = WebsocketCommunicator(application, f"/ws/events?last_event_id={ids[1]}&execution_id=q3")
        await ws.connect()
        frames = await frames_until(ws, lambda fs: len(only_events(fs)) >= 1)
        assert await ws.receive_nothing(0.5)
        await ws.disconnect()
        return ids, frames

    ids, frames = asyncio.run(scenario())
    assert [f["id"] for f in only_events(frames)] == [ids[3]]


def test_auth_api_key_session_and_close_code(settings):
    settings.API_KEYS = ["k-ws"]
    staff = User.objects.create_user("ops", password="pw-ops-12345", is_staff=True)
    client = Client()
    client.force_login(staff)
    cookie = f"sessionid={client.cookies['sessionid'].value}"

    async def attempt(path: str, headers: list | None = None) -> tuple[dict, dict | None]:
        ws = WebsocketCommunicator(application, path, headers=headers or [])
        connected, _ = await ws.connect()
        assert connected
        first = json.loads(await ws.receive_from(5))
        closed = None
        if first["type"] == "error":
            closed = await ws.receive_output(5)
        await ws.disconnect()
        return first, closed

    async def scenario():
        return {
            "none": await attempt("/ws/events"),
            "bad": await attempt("/ws/events?api_key=nope"),
            "key": await attempt("/ws/events?api_key=k-ws"),
            "session": await attempt("/ws/events", [(b"cookie", cookie.encode()), (b"host", b"localhost"), (b"origin", b"http://localhost")]),
        }

    got = asyncio.run(scenario())
    for name in ("none", "bad"):
        first, closed = got[name]
        assert first["error"] == "unauthorized", name
        assert closed == {"type": "websocket.close", "code": 4401}, name
    assert got["key"][0]["type"] == "stream.subscribed"
    assert got["session"][0]["type"] == "stream.subscribed"


def test_foreign_origin_is_refused_but_no_origin_is_allowed():
    async def scenario():
        foreign = WebsocketCommunicator(application, "/ws/events", headers=[(b"origin", b"https://evil.example")])
        refused, _ = await foreign.connect()
        plain = WebsocketCommunicator(application, "/ws/events")
        accepted, _ = await plain.connect()
        await plain.disconnect()
        return refused, accepted

    refused, accepted = asyncio.run(scenario())
    assert not refused
    assert accepted


@pytest.mark.parametrize(
    ("host", "origin", "allowed_origins", "accepted"),
    [
        (b"localhost:8080", b"http://localhost:8080", [], True),
        (b"localhost", b"http://localhost:80", [], True),
        (b"[::1]:8080", b"http://[::1]:8080", [], True),
        (b"localhost:8080", b"http://localhost:1234", [], False),  # another port
        (b"localhost:8080", b"https://localhost:8080", [], False),  # another scheme
        (b"localhost:8080", b"http://127.0.0.1:8080", [], False),  # another host
        (b"evil.example:8080", b"http://evil.example:8080", [], False),  # a rebinding name: not in ALLOWED_HOSTS
        (b"localhost:8080", b"null", [], False),
        (b"localhost:8080", b"http://localhost:8080/path", [], False),
        (b"localhost:8080", b"https://app.example.com", ["https://app.example.com"], True),
        (b"localhost:8080", b"https://app.example.com:8443", ["https://app.example.com"], False),
    ],
)
def test_origin_must_match_scheme_host_and_port(settings, host, origin, allowed_origins, accepted):
    settings.ALLOWED_ORIGINS = allowed_origins
    settings.ALLOWED_HOSTS = ["localhost", "127.0.0.1", "[::1]"]

    async def scenario() -> bool:
        ws = WebsocketCommunicator(application, "/ws/events", headers=[(b"host", host), (b"origin", origin)])
        connected, _ = await ws.connect()
        if connected:
            await ws.disconnect()
        return connected

    assert asyncio.run(scenario()) is accepted


def test_behind_a_tls_proxy_the_origin_is_https(settings):
    settings.ALLOWED_HOSTS = ["agents.example.com"]
    headers = [(b"host", b"agents.example.com"), (b"origin", b"https://agents.example.com"), (b"x-forwarded-proto", b"https")]

    async def connects() -> bool:
        ws = WebsocketCommunicator(application, "/ws/events", headers=headers)
        connected, _ = await ws.connect()
        if connected:
            await ws.disconnect()
        return connected

    settings.SECURE_PROXY_SSL_HEADER = None
    assert asyncio.run(connects()) is False, "X-Forwarded-Proto is not trusted unless configured"
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    assert asyncio.run(connects()) is True
