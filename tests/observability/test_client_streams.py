"""A client key's event streams (SSE and WebSocket): its own executions' events and nothing else.

Replayed (filtered in SQL) and live (the tail looks each page's owners up while such a
stream is open); node events and other keys' executions never reach it. Agent keys
are refused; admins still see everything.
"""

import asyncio
import json

import pytest
from channels.testing import WebsocketCommunicator
from django.db import connections

from agentfield_site.asgi import application
from agentfield_site.models import ApiKey
from devtools.sse import AsgiSse, events_only
from executions.models import Execution
from observability import events, tail

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("poll_without_channel_layer")]


@pytest.fixture(autouse=True)
def _release_stream_connections():
    yield
    tail.close_pool_connections()


@pytest.fixture
def world():
    keys = {name: ApiKey.create(name, scope) for name, scope in
            (("alice", "client"), ("bob", "client"), ("agent", "agent"), ("ops", "admin"))}
    mine = {name: Execution.objects.create(target="n.r", agent_node_id="n", reasoner_id="r", owner=keys[name][0]).id
            for name in ("alice", "bob")}
    return {name: raw for name, (_, raw) in keys.items()}, mine


def publish(*specs: tuple[str, dict]) -> list[int]:
    try:
        return [events.publish(kind, **fields).id for kind, fields in specs]
    finally:
        connections.close_all()


def everyones(mine: dict[str, str]) -> list[tuple[str, dict]]:
    return [
        ("execution.created", {"execution_id": mine["bob"], "status": "queued"}),
        ("node.online", {"agent_node_id": "n"}),
        ("execution.created", {"execution_id": mine["alice"], "status": "queued"}),
        ("webhook.delivered", {"execution_id": mine["alice"], "status": "delivered"}),
        ("execution.completed", {"execution_id": mine["bob"], "status": "succeeded"}),
    ]


def _events(frames) -> list:
    return [f for f in events_only(frames) if f.event != "stream.reset"]


def test_a_client_key_streams_its_own_executions_events_replayed_and_live(world):
    keys, mine = world

    async def scenario():
        before = await asyncio.to_thread(publish, *everyones(mine))
        replay = await AsgiSse(application, "/api/ui/v1/executions/events", "last_event_id=0",
                               {"X-API-Key": keys["alice"]}).start()
        # After a stream.reset when the log starts past id 1 (an earlier test's events).
        frames = await replay.read_until(lambda fs: len(_events(fs)) >= 2)
        replayed = _events(frames)
        await replay.close()
        live = await AsgiSse(application, "/api/ui/v1/executions/events", headers={"X-API-Key": keys["alice"]}).start()
        await live.read_until(lambda fs: any(f.retry for f in fs))
        after = await asyncio.to_thread(publish, *everyones(mine))
        got = await live.read_events(2)
        await live.close()
        return before, replayed, after, got

    before, replayed, after, got = asyncio.run(scenario())
    assert [int(f.id) for f in replayed] == [before[2], before[3]]
    assert [int(f.id) for f in got] == [after[2], after[3]]
    assert {f.json["execution_id"] for f in replayed + got} == {mine["alice"]}


def test_a_client_keys_socket_carries_its_own_executions_only(world):
    keys, mine = world

    async def scenario():
        ws = WebsocketCommunicator(application, f"/ws/events?api_key={keys['bob']}")
        assert (await ws.connect())[0]
        hello = json.loads(await ws.receive_from(5))
        ids = await asyncio.to_thread(publish, *everyones(mine))
        frames = [json.loads(await ws.receive_from(5)) for _ in range(2)]
        await ws.send_json_to({"action": "subscribe", "filters": {}, "last_event_id": 0})
        resubscribed = json.loads(await ws.receive_from(5))
        replayed = []
        while len(replayed) < 2:  # after a stream.reset when the log starts past id 1
            frame = json.loads(await ws.receive_from(5))
            if frame["type"] != "stream.reset":
                replayed.append(frame)
        assert await ws.receive_nothing(0.5)
        await ws.disconnect()
        return hello, ids, frames, resubscribed, replayed

    hello, ids, frames, resubscribed, replayed = asyncio.run(scenario())
    assert hello["type"] == resubscribed["type"] == "stream.subscribed" and "owner_id" not in hello["filters"]
    assert [f["id"] for f in frames] == [f["id"] for f in replayed] == [ids[0], ids[4]]


def test_agent_keys_are_refused_and_admins_see_everything(world):
    keys, mine = world

    async def scenario():
        refused = await AsgiSse(application, "/api/ui/v1/executions/events", headers={"X-API-Key": keys["agent"]}).start()
        await refused.read_to_end()
        nodes = await AsgiSse(application, "/api/ui/v1/nodes/events", headers={"X-API-Key": keys["alice"]}).start()
        await nodes.read_to_end()
        ids = await asyncio.to_thread(publish, *everyones(mine))
        admin = await AsgiSse(application, "/api/ui/v1/executions/events", f"last_event_id={ids[0] - 1}",
                              {"X-API-Key": keys["ops"]}).start()
        seen = await admin.read_events(4)
        await admin.close()
        return refused, nodes, ids, seen

    refused, nodes, ids, seen = asyncio.run(scenario())
    assert refused.status == nodes.status == 403
    assert json.loads(refused.body)["error"] == "forbidden"
    assert [int(f.id) for f in seen] == [ids[0], ids[2], ids[3], ids[4]]  # the execution stream: no node event


def test_an_operators_subscription_deliveries_stay_out_of_a_clients_stream(world):
    """The webhook events of another key's subscription carry its URL: never on a client's stream."""
    from webhooks import subscriptions

    keys, mine = world
    ops = ApiKey.objects.get(name="ops")
    theirs, _ = subscriptions.create(url="https://hooks.example.com/T0K3N", event_types=["*"], headers={}, owner_id=ops.pk)
    alices, _ = subscriptions.create(url="https://alice.example.com/h", event_types=["*"], headers={},
                                     owner_id=ApiKey.objects.get(name="alice").pk)

    def delivered(subscription_id):
        return ("webhook.delivered", {"execution_id": mine["alice"], "status": "delivered",
                                      "data": {"subscription_id": subscription_id, "url": "..."}})

    async def scenario():
        ids = await asyncio.to_thread(publish, delivered(theirs.id), delivered(None), delivered(alices.id))
        live = await AsgiSse(application, f"/api/v1/executions/{mine['alice']}/events",
                             headers={"X-API-Key": keys["alice"]}).start()
        replayed = await live.read_until(lambda fs: len(_events(fs)) >= 2)
        await live.close()
        stream = await AsgiSse(application, "/api/ui/v1/executions/events", headers={"X-API-Key": keys["alice"]}).start()
        await stream.read_until(lambda fs: any(f.retry for f in fs))
        again = await asyncio.to_thread(publish, delivered(theirs.id), delivered(None), delivered(alices.id))
        got = await stream.read_until(lambda fs: len(_events(fs)) >= 2)
        await stream.close()
        return ids, _events(replayed), again, _events(got)

    ids, replayed, again, got = asyncio.run(scenario())
    assert [int(f.id) for f in replayed] == ids[1:]  # the execution's own webhook and alice's subscription
    assert [int(f.id) for f in got] == again[1:]
    assert all("T0K3N" not in f.data for f in replayed + got)


def test_replay_and_live_agree_on_a_subscriptions_event_without_an_execution(world):
    """A test send's failure belongs to the subscription's owner: live and on resume alike."""
    from webhooks import subscriptions

    keys, mine = world
    alices, _ = subscriptions.create(url="https://alice.example.com/h", event_types=["*"], headers={},
                                     owner_id=ApiKey.objects.get(name="alice").pk)
    failed = ("webhook.failed", {"status": "failed", "data": {"subscription_id": alices.id, "event": "webhook.test"}})

    async def scenario():
        live = await AsgiSse(application, "/api/ui/v1/executions/events", headers={"X-API-Key": keys["alice"]}).start()
        await live.read_until(lambda fs: any(f.retry for f in fs))
        ids = await asyncio.to_thread(publish, failed)
        got = _events(await live.read_until(lambda fs: len(_events(fs)) >= 1))
        await live.close()
        resumed = await AsgiSse(application, "/api/ui/v1/executions/events", f"last_event_id={ids[0] - 1}",
                                {"X-API-Key": keys["alice"]}).start()
        again = _events(await resumed.read_until(lambda fs: len(_events(fs)) >= 1))
        await resumed.close()
        bobs_own = await asyncio.to_thread(publish, ("execution.created", {"execution_id": mine["bob"]}))
        bobs = await AsgiSse(application, "/api/ui/v1/executions/events", f"last_event_id={ids[0] - 1}",
                             {"X-API-Key": keys["bob"]}).start()
        bob_saw = _events(await bobs.read_until(lambda fs: len(_events(fs)) >= 1))
        await bobs.close()
        return ids, got, again, bobs_own, bob_saw

    ids, got, again, bobs_own, bob_saw = asyncio.run(scenario())
    assert [int(f.id) for f in got] == [int(f.id) for f in again] == ids
    assert [int(f.id) for f in bob_saw] == bobs_own  # replayed past alice's event, without it


def test_a_revoked_keys_streams_end_and_its_socket_closes(world, settings, monkeypatch):
    """Revoking a key ends what it opened: the SSE body ends (the reconnect is a 401), the socket closes 4401."""
    from django.utils import timezone

    from agentfield_site import auth
    from observability import consumers, streams

    settings.STREAM_KEEPALIVE_SECONDS = 0.2
    settings.API_KEY_CACHE_SECONDS = 0
    monkeypatch.setattr(streams, "RECHECK_SECONDS", 0.2)
    monkeypatch.setattr(consumers, "RECHECK_SECONDS", 0.2)
    keys, mine = world

    async def scenario():
        sse = await AsgiSse(application, "/api/ui/v1/executions/events", headers={"X-API-Key": keys["alice"]}).start()
        await sse.read_until(lambda fs: any(f.retry for f in fs))
        ws = WebsocketCommunicator(application, f"/ws/events?api_key={keys['alice']}")
        assert (await ws.connect())[0]
        assert json.loads(await ws.receive_from(5))["type"] == "stream.subscribed"
        await asyncio.to_thread(_revoke, "alice")
        await sse.read_to_end(timeout=5)
        error = json.loads(await ws.receive_from(5))
        closed = await ws.receive_output(5)
        again = await AsgiSse(application, "/api/ui/v1/executions/events", headers={"X-API-Key": keys["alice"]}).start()
        await again.read_to_end()
        return sse, error, closed, again

    def _revoke(name: str) -> None:
        try:
            ApiKey.objects.filter(name=name).update(revoked_at=timezone.now())
            auth.forget_keys()
        finally:
            connections.close_all()

    sse, error, closed, again = asyncio.run(scenario())
    assert sse.ended
    assert error["error"] == "unauthorized" and closed == {"type": "websocket.close", "code": 4401}
    assert again.status == 401


def test_a_client_key_holds_at_most_its_share_of_streams_and_gets_them_back(world, settings):
    """STREAM_MAX_PER_KEY per process, SSE and sockets together; other keys and admins are not counted with it."""
    from observability.streams import open_streams

    settings.STREAM_MAX_PER_KEY = 2
    keys, _ = world
    # Places of earlier tests' streams whose loop closed before their bodies unwound (key ids are reused).
    open_streams.held.clear()

    def sse(key: str) -> AsgiSse:
        return AsgiSse(application, "/api/ui/v1/executions/events", headers={"X-API-Key": keys[key]})

    async def scenario():
        first = await sse("alice").start()
        ws = WebsocketCommunicator(application, f"/ws/events?api_key={keys['alice']}")
        assert (await ws.connect())[0]
        assert json.loads(await ws.receive_from(5))["type"] == "stream.subscribed"
        third = await sse("alice").start()
        await third.read_to_end()
        refused = third.status, third.headers.get("retry-after"), json.loads(third.body)
        refused_ws = WebsocketCommunicator(application, f"/ws/events?api_key={keys['alice']}")
        assert (await refused_ws.connect())[0]
        error = json.loads(await refused_ws.receive_from(5))
        closed = await refused_ws.receive_output(5)
        others = [await sse("bob").start(), await sse("ops").start(), await sse("ops").start()]
        statuses = [s.status for s in others]
        for stream in [first, *others]:
            await stream.close()
        await ws.disconnect()
        again = await sse("alice").start()
        status_again = again.status
        await again.close()
        for _ in range(100):  # the body's `finally` runs once the response task has unwound
            if not open_streams.held:
                break
            await asyncio.sleep(0.02)
        return refused, error, closed, statuses, status_again

    refused, error, closed, statuses, status_again = asyncio.run(scenario())
    assert refused[0] == 429 and refused[1] == "5" and refused[2]["error"] == "too_many_streams"
    assert error["error"] == "too_many_streams" and closed == {"type": "websocket.close", "code": 4429}
    assert statuses == [200, 200, 200], "another client key and an admin key open theirs"
    assert status_again == 200, "closed streams give their places back"
    assert open_streams.held == {}
