"""The auth matrix: every route without credentials, then scope x route x ownership.

First, without credentials, every URL pattern that needs them refuses. Open by
design: /health, the landing page and the API's index (links only), the favicon and the admin's login
and logout pages; the OpenAPI schema and its
docs page follow the API's rule.

Then the world: client A submitted `exec_a` to node `node_a`, which agent A
registered; client A owns subscription `sub_a` and a dead letter for `exec_a`.
Client B and agent B own the same things on their side. Each case calls one route
as one actor on A's objects and checks the status and, where it says more, what
came back.
"""

import asyncio
import json
import re
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import connections
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone
from rest_framework.test import APIClient

from agentfield_site.models import ApiKey
from devtools.loopback import LoopbackServer
from devtools.responses import content
from executions import lifecycle, nodes, submission
from executions.models import AgentNode, Execution
from webhooks import subscriptions
from webhooks.models import Delivery, Subscription

OPEN = {"/", "/favicon.ico", "/health", "/health/", "/admin/login/", "/admin/logout/", "/api/v1/", "/api/v1"}
# The JSON 404 for unknown /api/ paths: there is nothing behind it to protect.
CATCH_ALL = {"/api/"}
SAMPLE = {"pk": "x1", "id": "x1", "node_id": "n1", "execution_id": "exec_x1"}


def _walk(patterns, prefix=""):
    for p in patterns:
        route = prefix + str(p.pattern)
        if isinstance(p, URLResolver):
            yield from _walk(p.url_patterns, route)
        elif isinstance(p, URLPattern):
            yield route


def _concrete(route: str) -> str | None:
    """A request path for a route, with sample values in its parameters."""
    route = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: SAMPLE.get(m.group(1), "x1"), route)
    if route.startswith("^") or "(?P" in route or "\\" in route:
        # A regex route (admin internals, format suffixes): take literal ones only.
        route = route.lstrip("^").rstrip("$")
        if any(c in route for c in "()[]*+?\\|"):
            return None
    return "/" + route


def all_paths() -> list[str]:
    paths = {_concrete(r) for r in _walk(get_resolver().url_patterns)}
    return sorted(p for p in paths if p and not p.startswith("/static/"))


@pytest.mark.django_db
def test_every_route_needs_credentials_when_keys_are_configured(client, settings):
    settings.API_KEYS = ["matrix-key"]
    offenders = []
    for path in all_paths():
        if path in OPEN or path in CATCH_ALL:
            continue
        for method in ("get", "post"):
            response = getattr(client, method)(path, content_type="application/json", data="{}") if method == "post" else client.get(path)
            code = response.status_code
            if path.startswith("/admin/") or path.startswith("/dashboard/"):
                ok = code in (302, 401, 403, 404, 405)
                if code == 302:
                    ok = "/admin/login/" in response.headers.get("Location", "")
            else:
                ok = code in (401, 403, 404, 405)
                if code == 404:
                    # A 404 is only fine for a missing object *after* auth; without
                    # credentials the API must not reveal whether it exists.
                    ok = False
                if code == 405:
                    ok = True
            if not ok:
                offenders.append(f"{method.upper()} {path} -> {code}")
    assert not offenders, "\n".join(offenders)


@pytest.mark.django_db
def test_api_refusal_is_json_with_error_and_message(client, settings):
    settings.API_KEYS = ["matrix-key"]
    response = client.get("/api/v1/executions")
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"
    assert response.json()["message"] == "An API key is required: send X-API-Key, Authorization: Bearer, or ?api_key=."
    ok = client.get("/api/v1/executions", HTTP_X_API_KEY="matrix-key")
    assert ok.status_code == 200


@pytest.mark.django_db
def test_a_refusal_for_scope_names_admin_among_the_keys_that_may(client):
    _, raw = ApiKey.create("tourist", ApiKey.Scope.CLIENT)
    nodes_list = client.get("/api/v1/nodes", HTTP_X_API_KEY=raw)
    assert nodes_list.status_code == 403 and nodes_list.json()["error"] == "forbidden"
    assert nodes_list.json()["message"].endswith("is not open to client keys (it needs one of: admin, agent).")
    settings_page = client.get("/api/v1/settings/observability-webhook", HTTP_X_API_KEY=raw)
    assert settings_page.status_code == 403
    assert settings_page.json()["message"].endswith("(it needs an admin key).")


@pytest.mark.django_db
def test_the_demo_agents_key_leaves_the_api_open_and_still_works(client):
    _, demo = ApiKey.create("demo-agent", ApiKey.Scope.AGENT, demo=True)
    # No key of anyone else's: the API stays open (on loopback; serve refuses any other address).
    assert client.get("/api/v1/executions").status_code == 200
    assert client.get("/api/v1/nodes", HTTP_X_API_KEY=demo).status_code == 200
    assert client.get("/api/v1/nodes", HTTP_X_API_KEY="not-a-key").status_code == 401
    ApiKey.create("first", ApiKey.Scope.ADMIN)
    assert client.get("/api/v1/executions").status_code == 401
    assert client.get("/api/v1/nodes", HTTP_X_API_KEY=demo).status_code == 200


ACTORS = ("admin", "env_admin", "client_own", "client_other", "agent_own", "agent_other")


@dataclass
class World:
    keys: dict[str, str]
    agent: LoopbackServer
    ids: dict[str, object]


def _register(node_id: str, agent: LoopbackServer, owner: ApiKey) -> AgentNode:
    body = {"id": node_id, "base_url": agent.url, "reasoners": [{"id": "process"}], "skills": []}
    return nodes.register(body, caller=_caller(owner))[0]


def _caller(key: ApiKey):
    from agentfield_site.auth import Caller

    return Caller(key.scope, key.pk, key.name)


def _side(tag: str, agent: LoopbackServer, client_key: ApiKey, agent_key: ApiKey) -> dict[str, object]:
    node = _register(f"node_{tag}", agent, agent_key)
    execution, _ = submission.submit(
        submission.Request(target=f"{node.id}.process", input={"x": 1}, owner_id=client_key.pk), enqueue=False
    )
    lifecycle.transition(execution.id, "running")
    sub, _ = subscriptions.create(
        url="https://hooks.example.com/h", event_types=["execution.*"],
        headers={"Authorization": f"Bearer secret-{tag}"}, owner_id=client_key.pk,
    )
    dead = Delivery.objects.create(
        kind=Delivery.Kind.COMPLETION, event_type="execution.completed", execution_id=execution.id,
        url="https://hooks.example.com/h", body=b"{}", status=Delivery.Status.DEAD, attempts=6,
        dead_lettered_at=timezone.now(), owner_id=client_key.pk,
    )
    return {"node": node.id, "exec": execution.id, "sub": sub.id, "dead": dead.id}


@pytest.fixture
def world(db, settings):
    settings.API_KEYS = ["env-admin-key"]
    agent = LoopbackServer.agent().run_in_thread()
    keys: dict[str, ApiKey] = {}
    raw: dict[str, str] = {"env_admin": "env-admin-key"}
    for actor, scope in (("admin", "admin"), ("client_own", "client"), ("client_other", "client"),
                         ("agent_own", "agent"), ("agent_other", "agent")):
        keys[actor], raw[actor] = ApiKey.create(actor, scope)
    a = _side("a", agent, keys["client_own"], keys["agent_own"])
    b = _side("b", agent, keys["client_other"], keys["agent_other"])
    yield World(keys=raw, agent=agent, ids={**{f"{k}_a": v for k, v in a.items()}, **{f"{k}_b": v for k, v in b.items()}})
    agent.stop()


# What each actor gets. Ownership is in the columns: "own" actors hold A's keys,
# "other" actors B's, and every case acts on A's objects.
ADMIN_ONLY = {"admin": 200, "env_admin": 200, "client_own": 403, "client_other": 403,
              "agent_own": 403, "agent_other": 403}


def client_route(ok: int, other: int = 404) -> dict[str, int]:
    return {"admin": ok, "env_admin": ok, "client_own": ok, "client_other": other, "agent_own": 403, "agent_other": 403}


def read_route(ok: int) -> dict[str, int]:
    """A client's read that an agent key may make too, of the executions dispatched to its nodes (and their calls)."""
    return {**client_route(ok), "agent_own": ok, "agent_other": 404}


def agent_route(ok: int, other: int = 404) -> dict[str, int]:
    return {"admin": ok, "env_admin": ok, "client_own": 403, "client_other": 403, "agent_own": ok, "agent_other": other}


def listed_for(key: str, field: str, results: str) -> Callable[[str, dict, World], None]:
    def check(actor: str, body: dict, world: World) -> None:
        shown = {row[field] for row in body[results]}
        mine, theirs = world.ids[f"{key}_a"], world.ids[f"{key}_b"]
        if actor.endswith("admin"):
            assert {mine, theirs} <= shown
        elif actor.endswith("_own"):
            assert mine in shown and theirs not in shown
        else:
            assert theirs in shown and mine not in shown, f"{actor} sees another key's {key}"

    return check


def batch_check(actor: str, body: dict, world: World) -> None:
    status = body[world.ids["exec_a"]]["status"]
    assert (status == "not_found") == actor.endswith("_other")


def redrive_check(actor: str, body: dict, world: World) -> None:
    assert body["queued"] == body["processed"] == (0 if actor == "client_other" else 1)
    moved = Delivery.objects.get(pk=world.ids["dead_a"]).status != Delivery.Status.DEAD
    assert moved == (actor != "client_other")


def workflow_check(actor: str, body: dict, world: World) -> None:
    # Another agent's execution is acknowledged and ignored, like an id never issued.
    assert body["applied"] == (actor != "agent_other")


def masked_headers(actor: str, body: dict, world: World) -> None:
    assert body["headers"] == {"Authorization": "***"}


def node_owner_after(actor: str, body: dict, world: World) -> None:
    """The registering key owns the node; a refused one leaves it with its owner."""
    owner = AgentNode.objects.get(pk="node_a").owner
    if "error" in body:
        assert owner.name == "agent_own", "a refusal must leave the node with its owner"
    elif actor == "env_admin":
        assert owner is None
    else:
        assert owner.name == actor


def status_check(actor: str, body: dict, world: World) -> None:
    assert Execution.objects.get(pk=world.ids["exec_a"]).status == "succeeded"


def not_forged(actor: str, body: dict, world: World) -> None:
    assert Execution.objects.get(pk=world.ids["exec_a"]).status == "running"


def register_body(world: World) -> dict:
    return {"id": "node_a", "base_url": world.agent.url, "reasoners": [{"id": "process"}], "skills": []}


# (method, path, body, expected status per actor, extra check on success, extra check on refusal)
# Routes every actor may read alike (they name no data).
EVERYONE = {"admin": 200, "env_admin": 200, "client_own": 200, "client_other": 200, "agent_own": 200, "agent_other": 200}

CASES = [
    ("get", "/api/v1/", None, EVERYONE, None, None),
    ("get", "/api/v1", None, EVERYONE, None, None),
    ("get", "/api/v1/nodes", None, agent_route(200, 200), listed_for("node", "id", "nodes"), None),
    ("post", "/api/v1/nodes/register", register_body, agent_route(201, 409), node_owner_after, node_owner_after),
    ("post", "/api/v1/nodes", register_body, agent_route(201, 409), node_owner_after, node_owner_after),
    ("get", "/api/v1/nodes/{node_a}", None, agent_route(200), None, None),
    ("post", "/api/v1/nodes/{node_a}/heartbeat", {"status": "ready"}, agent_route(200), None, None),
    ("post", "/api/v1/nodes/{node_a}/shutdown", {}, agent_route(200), None, None),
    ("post", "/api/v1/did/register", {}, agent_route(404, 404), None, None),
    ("post", "/api/v1/workflow/executions/events", lambda w: {"execution_id": w.ids["exec_a"], "status": "paused"},
     agent_route(200, 200), workflow_check, None),
    ("post", "/api/v1/executions/{exec_a}/status", {"status": "succeeded", "result": {"forged": False}},
     agent_route(200), status_check, not_forged),
    ("post", "/api/v1/executions/{exec_a}/logs", {"entries": [{"message": "hi"}]}, agent_route(200), None, None),
    ("post", "/api/v1/executions/note", {"message": "hi"}, agent_route(200), None, None),
    ("post", "/api/v1/execute/async/{node_a}.process", {"input": {}}, client_route(202, 202), None, None),
    ("get", "/api/v1/executions", None, client_route(200, 200), listed_for("exec", "execution_id", "results"), None),
    ("post", "/api/v1/executions/batch-status", lambda w: {"execution_ids": [w.ids["exec_a"]]},
     read_route(200) | {"client_other": 200, "agent_other": 200}, batch_check, None),
    ("get", "/api/v1/executions/{exec_a}", None, read_route(200), None, None),
    ("post", "/api/v1/executions/{exec_a}/cancel", {"reason": "test"}, client_route(200), None, not_forged),
    ("post", "/api/v1/executions/{exec_a}/webhook/retry", None, client_route(202), None, None),
    ("get", "/api/v1/webhooks/subscriptions", None, client_route(200, 200), None, None),
    ("post", "/api/v1/webhooks/subscriptions",
     {"url": "https://hooks.example.com/new", "event_types": ["execution.*"]}, client_route(201, 201), None, None),
    ("get", "/api/v1/webhooks/subscriptions/{sub_a}", None, client_route(200), masked_headers, None),
    ("patch", "/api/v1/webhooks/subscriptions/{sub_a}", {"url": "https://evil.example.com/h"}, client_route(200),
     None, None),
    ("put", "/api/v1/webhooks/subscriptions/{sub_a}",
     {"url": "https://evil.example.com/h", "event_types": ["*"]}, client_route(200), None, None),
    ("delete", "/api/v1/webhooks/subscriptions/{sub_a}", None, client_route(204), None, None),
    ("post", "/api/v1/webhooks/subscriptions/{sub_a}/rotate-secret", None, client_route(200), None, None),
    ("post", "/api/v1/webhooks/subscriptions/{sub_a}/test", None, client_route(202), None, None),
    ("get", "/api/v1/webhooks/dlq", None, client_route(200, 200), listed_for("dead", "id", "entries"), None),
    ("post", "/api/v1/webhooks/dlq/redrive", lambda w: {"ids": [w.ids["dead_a"]]}, client_route(200, 200),
     redrive_check, None),
    ("get", "/api/v1/webhooks/destinations", None, ADMIN_ONLY, None, None),
    ("get", "/api/v1/settings/observability-webhook", None, ADMIN_ONLY, None, None),
    ("post", "/api/v1/settings/observability-webhook", {"url": "https://collector.example.com/in"}, ADMIN_ONLY,
     None, None),
    ("delete", "/api/v1/settings/observability-webhook", None, ADMIN_ONLY, None, None),
    ("get", "/api/v1/settings/observability-webhook/status", None, ADMIN_ONLY, None, None),
    ("get", "/api/v1/settings/observability-webhook/dlq", None, ADMIN_ONLY, None, None),
    ("delete", "/api/v1/settings/observability-webhook/dlq", None, ADMIN_ONLY, None, None),
    ("post", "/api/v1/settings/observability-webhook/redrive", {},
     {**ADMIN_ONLY, "admin": 409, "env_admin": 409}, None, None),  # 409: no collector configured
    ("get", "/api/schema/", None, dict.fromkeys(ACTORS, 200), None, None),
]


def _fill(path: str, world: World) -> str:
    return path.format(**world.ids)


# Headers a route reads its object from (the SDK's note names its execution so).
CASE_HEADERS = {"/api/v1/executions/note": {"X-Execution-ID": "{exec_a}"}}


@pytest.mark.parametrize("actor", ACTORS)
@pytest.mark.parametrize(("method", "path", "body", "expected", "on_ok", "on_refused"), CASES,
                         ids=[f"{c[0].upper()} {c[1]}" for c in CASES])
def test_scope_and_ownership(world, actor, method, path, body, expected, on_ok, on_refused):
    api = APIClient()
    data = body(world) if callable(body) else body
    url = _fill(path, world)
    headers = {name: _fill(value, world) for name, value in CASE_HEADERS.get(path, {}).items()}
    response = getattr(api, method)(url, data, format="json", headers={"X-API-Key": world.keys[actor], **headers})
    want = expected[actor]
    assert response.status_code == want, f"{actor}: {method.upper()} {url} -> {response.status_code} {response.content[:300]!r}"
    if not response.headers.get("Content-Type", "").startswith("application/json"):
        return
    body = content(response)
    payload = json.loads(body) if body else {}
    if want >= 400:
        words = {403: {"forbidden"}, 404: {"not_found", "not_supported"}, 409: {"conflict", "not_configured"}}
        assert payload["error"] in words[want], payload
        assert payload["message"]
        if on_refused:
            on_refused(actor, payload, world)
    elif on_ok:
        on_ok(actor, payload, world)


# The streams and the sync execute do their database work on threads of their
# own: they need committed rows (a transactional test).
THREADED = [
    ("get", "/api/v1/executions/{exec_a}/events", client_route(200)),
    ("get", "/api/ui/v1/executions/events", {**ADMIN_ONLY, "client_own": 200, "client_other": 200}),  # its own
    ("get", "/api/ui/v1/nodes/events", ADMIN_ONLY),
    ("post", "/api/v1/execute/{node_a}.process", client_route(200, 200)),
]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("method", "path", "expected"), THREADED, ids=[f"{m.upper()} {p}" for m, p, _ in THREADED])
def test_threaded_routes_by_scope_and_ownership(world, method, path, expected):
    from observability import tail

    try:
        for actor in ACTORS:
            response = getattr(Client(), method)(_fill(path, world), {"input": {}} if method == "post" else None,
                                                 content_type="application/json",
                                                 headers={"X-API-Key": world.keys[actor]})
            assert response.status_code == expected[actor], f"{actor}: {path} -> {response.status_code}"
            if expected[actor] != 200:
                assert response.json()["error"] == ("forbidden" if expected[actor] == 403 else "not_found")
            elif method == "get":
                assert response["Content-Type"] == "text/event-stream"
            else:
                assert response.json()["status"] == "succeeded"
                owner = Execution.objects.get(pk=response.json()["execution_id"]).owner
                assert (owner.name if owner else "env_admin") == actor
            response.close()
    finally:
        tail.close_pool_connections()


def _all_api_routes() -> set[str]:
    found = set()
    for route in _walk(get_resolver().url_patterns):
        # Router routes come as regexes with `/?$` and named groups: reduce to one shape.
        route = re.sub(r"\(\?P<\w+>[^)]*\)", "{}", route).lstrip("^").replace("/?$", "").rstrip("$")
        if not route.startswith(("api/v1", "api/ui")):
            continue
        for name in ("node_id", "execution_id", "target"):
            route = route.replace(f"<str:{name}>", "{}")
        found.add("/" + route)
    return found


def test_the_matrix_covers_every_api_route():
    paths = [path for _, path, *_ in CASES] + [path for _, path, _ in THREADED]
    covered = {re.sub(r"\{\w+\}(\.process)?", "{}", path) for path in paths}
    missing = _all_api_routes() - covered
    assert not missing, f"routes without a row in the scope matrix: {sorted(missing)}"


def test_subscription_of_a_client_hears_only_its_own_executions(world):
    """Subscriptions fan out platform events: a client key's hears about its executions only."""
    Delivery.objects.all().delete()
    Subscription.objects.filter(pk=world.ids["sub_a"]).update(event_types=["execution.*", "node.*"])
    subscriptions.invalidate_cache()
    for execution_id in (world.ids["exec_a"], world.ids["exec_b"]):
        lifecycle.transition(execution_id, "succeeded", result={"n": 1})
    nodes.shutdown("node_a")
    heard = Delivery.objects.filter(subscription_id=world.ids["sub_a"])
    assert {d.execution_id for d in heard} == {world.ids["exec_a"]}
    assert all(d.owner.name == "client_own" for d in heard)
    # An admin's subscription (env key: no owner) hears every execution and node.
    admin_sub, _ = subscriptions.create(url="https://hooks.example.com/all", event_types=["*"], headers={})
    lifecycle.transition(
        submission.submit(submission.Request(target="node_b.process", input={}), enqueue=False)[0].id, "cancelled"
    )
    assert Delivery.objects.filter(subscription=admin_sub).exists()


def test_the_completion_webhook_is_owned_by_the_submitting_key(world):
    Delivery.objects.all().delete()
    execution = Execution.objects.get(pk=world.ids["exec_b"])
    Execution.objects.filter(pk=execution.pk).update(webhook_registered=True, webhook_url="https://hooks.example.com/c")
    lifecycle.transition(execution.id, "failed", error="x")
    row = Delivery.objects.get(kind=Delivery.Kind.COMPLETION, execution_id=execution.id)
    assert row.owner.name == "client_other"


def test_each_key_has_its_own_idempotency_keys(world):
    """Another key's Idempotency-Key is neither its execution nor a block: one tenant cannot squat another's keys."""
    api = APIClient()
    path = "/api/v1/execute/async/node_a.process"

    def submit(key: str) -> dict:
        response = api.post(path, {"input": {}}, format="json",
                            headers={"X-API-Key": world.keys[key], "Idempotency-Key": "order-123"})
        assert response.status_code == 202, response.content
        return response.json()

    squatter = submit("client_other")  # first, as an attacker guessing the key would be
    first, again = submit("client_own"), submit("client_own")
    assert first["execution_id"] == again["execution_id"] != squatter["execution_id"]
    assert submit("client_other")["execution_id"] == squatter["execution_id"]
    assert Execution.objects.filter(idempotency_key="order-123").count() == 2


def test_an_ownerless_node_is_claimed_by_an_agent_key_only_once_offline(world):
    api = APIClient()
    nodes.register({"id": "legacy", "base_url": world.agent.url, "reasoners": [{"id": "process"}]})
    body = {"id": "legacy", "base_url": world.agent.url, "reasoners": [{"id": "process"}]}
    taken = api.post("/api/v1/nodes/register", body, format="json", headers={"X-API-Key": world.keys["agent_own"]})
    assert taken.status_code == 409
    nodes.shutdown("legacy")
    claimed = api.post("/api/v1/nodes/register", body, format="json", headers={"X-API-Key": world.keys["agent_own"]})
    assert claimed.status_code == 201
    assert AgentNode.objects.get(pk="legacy").owner.name == "agent_own"
    again = api.post("/api/v1/nodes/register", body, format="json", headers={"X-API-Key": world.keys["agent_other"]})
    assert again.status_code == 409


def test_a_revoked_key_is_refused_and_its_objects_stay_its_own(world):
    ApiKey.objects.filter(name="client_own").update(revoked_at=timezone.now())
    api = APIClient()
    gone = api.get(f"/api/v1/executions/{world.ids['exec_a']}", headers={"X-API-Key": world.keys["client_own"]})
    assert gone.status_code == 401
    other = api.get(f"/api/v1/executions/{world.ids['exec_a']}", headers={"X-API-Key": world.keys["client_other"]})
    assert other.status_code == 404


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("scope", "code"), [("admin", None), ("client", None), ("agent", 4403)])
def test_the_event_socket_is_for_admins_and_clients(settings, scope, code):
    """Admins get every event, a client key its own executions' (tests/observability/test_client_streams.py)."""
    from agentfield_site.asgi import application
    from observability import tail

    # One event loop per test: poll the log rather than bind a channel layer to this loop
    # (its Redis listener can hang the next loop's shutdown; see tests/observability/conftest.py).
    settings.CHANNEL_LAYERS = {}
    raw = ApiKey.create(f"ws-{scope}", scope)[1]

    async def scenario():
        ws = WebsocketCommunicator(application, f"/ws/events?api_key={raw}")
        connected, _ = await ws.connect()
        assert connected
        first = json.loads(await ws.receive_from(5))
        if code is None:
            assert first["type"] == "stream.subscribed"
        else:
            assert first["error"] == "forbidden"
            closed = await ws.receive_output(5)
            assert closed == {"type": "websocket.close", "code": code}
        await ws.disconnect()

    try:
        asyncio.run(scenario())
    finally:
        tail.close_pool_connections()
        asyncio.run(sync_to_async(connections.close_all)())


def test_an_agent_key_calls_other_agents_only_from_its_running_executions(world):
    """The SDK's `app.call`: an agent key submits with X-Parent-Execution-ID; the call is the client's."""
    api = APIClient()

    def submit(actor: str, parent: str | None) -> object:
        headers = {"X-API-Key": world.keys[actor]}
        if parent is not None:
            headers["X-Parent-Execution-ID"] = parent
        return api.post("/api/v1/execute/async/node_b.process", {"input": {}}, format="json", headers=headers)

    parent = world.ids["exec_a"]  # running on node_a, the own agent's node; submitted by client_own
    for actor, parent_id in (("agent_own", None), ("agent_own", "exec_unknown"), ("agent_other", parent),
                             ("agent_own", world.ids["exec_b"])):
        refused = submit(actor, parent_id)
        assert refused.status_code == 403 and refused.json()["error"] == "forbidden", (actor, parent_id)
    call = submit("agent_own", parent)
    assert call.status_code == 202, call.content
    child = Execution.objects.get(pk=call.json()["execution_id"])
    assert child.owner.name == "client_own" and child.parent_execution_id == parent

    def read(actor: str) -> int:
        return api.get(f"/api/v1/executions/{child.id}", headers={"X-API-Key": world.keys[actor]}).status_code

    # The caller, the agent it called (node_b's: the call is dispatched to it) and the workflow's client read it.
    assert {actor: read(actor) for actor in ("agent_own", "agent_other", "client_own", "client_other")} == {
        "agent_own": 200, "agent_other": 200, "client_own": 200, "client_other": 404}
    unrelated = submission.submit(submission.Request(target="node_b.process", input={},
                                                     owner_id=ApiKey.objects.get(name="client_other").pk), enqueue=False)[0]
    assert api.get(f"/api/v1/executions/{unrelated.id}", headers={"X-API-Key": world.keys["agent_own"]}).status_code == 404
    sync = api.post("/api/v1/execute/node_b.process", {"input": {}}, format="json",
                    headers={"X-API-Key": world.keys["agent_own"], "X-Parent-Execution-ID": parent})
    assert sync.status_code == 403  # calls wait by reading, not on the sync threads every client shares
    lifecycle.transition(parent, "succeeded", result={})
    assert submit("agent_own", parent).status_code == 403  # a finished execution makes no more calls


def test_a_client_key_names_only_its_own_executions_as_parent(world):
    """A parent makes the child readable by the agent that runs it: another client's parent would hand it over."""
    api = APIClient()

    def submit(parent: str) -> object:
        return api.post("/api/v1/execute/async/node_b.process", {"input": {"mine": True}}, format="json",
                        headers={"X-API-Key": world.keys["client_other"], "X-Parent-Execution-ID": parent})

    for parent in (world.ids["exec_a"], "exec_unknown"):  # client_own's, and none: the same answer
        refused = submit(parent)
        assert refused.status_code == 400 and refused.json()["error"] == "bad_request", refused.content
        assert "X-Parent-Execution-ID" in refused.json()["message"]
    assert not Execution.objects.filter(parent_execution_id=world.ids["exec_a"], input={"mine": True}).exists()
    own = submit(world.ids["exec_b"])  # its own execution
    assert own.status_code == 202, own.content
    assert Execution.objects.get(pk=own.json()["execution_id"]).parent_execution_id == world.ids["exec_b"]


def test_an_agent_call_has_the_agent_keys_own_idempotency_keys(world):
    """The call is the client's, but its Idempotency-Key is the agent key's: it can neither read nor plant the client's."""
    api = APIClient()
    parent = world.ids["exec_a"]

    def submit(actor: str, input_: dict, **headers) -> object:
        return api.post("/api/v1/execute/async/node_b.process", {"input": input_}, format="json",
                        headers={"X-API-Key": world.keys[actor], "Idempotency-Key": "order-123", **headers})

    clients = submit("client_own", {"card": "secret"})
    assert clients.status_code == 202
    agents = submit("agent_own", {}, **{"X-Parent-Execution-ID": parent})
    assert agents.status_code == 202 and agents.json()["execution_id"] != clients.json()["execution_id"]
    assert "secret" not in agents.content.decode()
    # Planted first under a key the client uses next: the client still gets its own execution.
    planted = submit("agent_own", {"forged": True}, **{"X-Parent-Execution-ID": parent, "Idempotency-Key": "order-124"})
    own = api.post("/api/v1/execute/async/node_b.process", {"input": {"real": True}}, format="json",
                   headers={"X-API-Key": world.keys["client_own"], "Idempotency-Key": "order-124"})
    assert own.status_code == 202 and own.json()["execution_id"] != planted.json()["execution_id"]
    assert Execution.objects.get(pk=own.json()["execution_id"]).input == {"real": True}


def test_an_idempotency_key_replayed_with_another_request_is_a_409(world):
    api = APIClient()
    headers = {"X-API-Key": world.keys["client_own"], "Idempotency-Key": "k-9"}
    first = api.post("/api/v1/execute/async/node_a.process", {"input": {"n": 1}}, format="json", headers=headers)
    again = api.post("/api/v1/execute/async/node_a.process", {"input": {"n": 1}}, format="json", headers=headers)
    assert first.status_code == again.status_code == 202 and first.json()["execution_id"] == again.json()["execution_id"]
    for path, body in (("/api/v1/execute/async/node_a.process", {"input": {"n": 2}}),
                       ("/api/v1/execute/async/node_b.process", {"input": {"n": 1}})):
        other = api.post(path, body, format="json", headers=headers)
        assert other.status_code == 409 and other.json()["error"] == "conflict", other.content
        assert first.json()["execution_id"] not in other.content.decode()
