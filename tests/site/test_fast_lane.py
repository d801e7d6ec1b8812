"""The fast lane (heartbeat, async submit, execution read) answers exactly as the DRF view does.

The same request goes once with its key in a header (the fast lane takes it) and
once as `?api_key=` (the fast lane leaves it to DRF's view); answers must match.
"""

import pytest
from rest_framework.test import APIClient

from agentfield_site import fast_lane
from agentfield_site.auth import Caller
from agentfield_site.models import ApiKey
from executions import nodes

pytestmark = pytest.mark.django_db

STABLE_HEADERS = ("Content-Type", "Allow", "Vary", "X-Content-Type-Options", "X-Frame-Options")


@pytest.fixture
def keys() -> dict[str, str]:
    agent, agent_raw = ApiKey.create("agent", ApiKey.Scope.AGENT)
    _, client_raw = ApiKey.create("client", ApiKey.Scope.CLIENT)
    nodes.register(
        {"id": "writer", "base_url": "http://localhost:8001", "reasoners": [{"id": "draft"}]},
        Caller(ApiKey.Scope.AGENT, agent.pk, agent.name),
    )
    return {"agent": agent_raw, "client": client_raw}


@pytest.fixture
def drf_answered(monkeypatch) -> list[str]:
    """The paths the DRF view answered (the fast lane handed over)."""
    seen: list[str] = []
    original = fast_lane.respond

    def recording(view, request, args, kwargs):
        seen.append(request.path)
        return original(view, request, args, kwargs)

    monkeypatch.setattr(fast_lane, "respond", recording)
    return seen


def _both(method: str, path: str, key: str, body: dict | None = None, drop: tuple[str, ...] = ()):
    fast = getattr(APIClient(), method)(path, body, format="json", HTTP_X_API_KEY=key)
    slow = getattr(APIClient(), method)(f"{path}?api_key={key}", body, format="json")
    assert fast.status_code == slow.status_code, (fast.content, slow.content)
    for name in STABLE_HEADERS:
        assert fast.headers.get(name) == slow.headers.get(name), name
    fast_doc, slow_doc = dict(fast.json()), dict(slow.json())
    for name in drop:
        fast_doc.pop(name), slow_doc.pop(name)
    assert fast_doc == slow_doc
    return fast


def test_heartbeat(keys, drf_answered):
    response = _both("post", "/api/v1/nodes/writer/heartbeat", keys["agent"], {"status": "ready"}, drop=("timestamp",))
    assert response.json()["message"] == "heartbeat received"
    assert drf_answered == ["/api/v1/nodes/writer/heartbeat"], "only the ?api_key= one went to DRF"


def test_submit_and_read(keys, drf_answered):
    path = "/api/v1/execute/async/writer.draft"
    created = ("execution_id", "run_id", "workflow_id", "created_at", "enqueued_at")
    submitted = _both("post", path, keys["client"], {"input": {"n": 1}}, drop=created)
    assert submitted.status_code == 202
    execution_id = submitted.json()["execution_id"]
    _both("get", f"/api/v1/executions/{execution_id}", keys["client"])
    assert drf_answered == [path, f"/api/v1/executions/{execution_id}"]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"status": "x" * 33}, 400),  # the serializer's max_length
        ({"status": 7}, 200),  # not a string: the serializer decides (it takes numbers)
        ({"status": None}, 400),
    ],
)
def test_what_the_fast_lane_does_not_judge_the_serializer_does(keys, drf_answered, body, status):
    response = APIClient().post("/api/v1/nodes/writer/heartbeat", body, format="json", HTTP_X_API_KEY=keys["agent"])
    assert response.status_code == status, response.content
    assert drf_answered == ["/api/v1/nodes/writer/heartbeat"]


def test_refusals_come_from_drf(keys, drf_answered):
    api = APIClient()
    unknown = api.post("/api/v1/nodes/ghost/heartbeat", {}, format="json", HTTP_X_API_KEY=keys["agent"])
    assert unknown.status_code == 404 and unknown.json()["error"] == "not_found"
    wrong_scope = api.post("/api/v1/nodes/writer/heartbeat", {}, format="json", HTTP_X_API_KEY=keys["client"])
    assert wrong_scope.status_code == 403 and wrong_scope.json()["error"] == "forbidden"
    bad_key = api.get("/api/v1/executions/exec_x", HTTP_X_API_KEY="nope")
    assert bad_key.status_code == 401 and bad_key.json()["error"] == "unauthorized"
    no_target = api.post("/api/v1/execute/async/writer.nothing", {}, format="json", HTTP_X_API_KEY=keys["client"])
    assert no_target.status_code == 404 and no_target.json()["error_category"] == "not_found"
    wrong_method = api.get("/api/v1/nodes/writer/heartbeat", HTTP_X_API_KEY=keys["agent"])
    assert wrong_method.status_code == 405
    assert len(drf_answered) == 5


BIG_BODY = b'{"status": "ready", "pad": [' + b"[]," * 20_000 + b"[]]}"


@pytest.mark.django_db(transaction=True)
def test_a_made_up_key_gets_its_401_without_its_body_being_parsed(keys, parses):
    """Any made-up key used to have its body (up to MAX_BODY_BYTES, about a second of CPU
    to parse) parsed by the fast lane before the key was looked at: on the event loop, for
    the heartbeat, so a few such requests held up every connection of the process."""
    import asyncio

    from asgiref.sync import sync_to_async
    from django.db import connections
    from django.test import AsyncClient

    for path in ("/api/v1/nodes/writer/heartbeat", "/api/v1/execute/async/writer.draft"):
        refused = APIClient().post(path, BIG_BODY, content_type="application/json", HTTP_X_API_KEY="made-up")
        assert refused.status_code == 401

        async def on_the_loop(path=path):
            return await AsyncClient().post(path, BIG_BODY, content_type="application/json", headers={"X-API-Key": "made-up"})

        try:
            assert asyncio.run(on_the_loop()).status_code == 401
        finally:
            asyncio.run(sync_to_async(connections.close_all)())
    assert parses == []
