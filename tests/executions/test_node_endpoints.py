"""Node registry endpoints as the SDK's Agent calls them, and offline detection."""

from datetime import timedelta

import pytest
from django.utils import timezone

from devtools.responses import json_of
from executions import nodes
from executions.models import AgentNode
from observability.models import PlatformEvent

pytestmark = pytest.mark.django_db

URL = "http://localhost:8001"
SDK_BODY = {
    "id": "writer",
    "team_id": "default",
    "base_url": "http://localhost:8001",
    "version": "1.2.0",
    "reasoners": [{"id": "draft", "input_schema": {"type": "object"}, "output_schema": {}, "tags": ["x"]}],
    "skills": [{"id": "spell", "tags": []}],
    "proposed_tags": [],
    "instance_id": "i-1",
    "lifecycle_status": "starting",
    "communication_config": {"protocols": ["http"], "heartbeat_interval": "2s"},
    "health_status": "healthy",
    "metadata": {"deployment": {"platform": "python"}, "custom": {}},
}


def _types() -> list[str]:
    return list(PlatformEvent.objects.values_list("type", flat=True))


def test_register_then_reregister_updates(api):
    response = api.post("/api/v1/nodes/register", SDK_BODY, format="json")
    assert response.status_code == 201
    assert response.json() == {
        "success": True, "message": "node registered", "node_id": "writer", "resolved_base_url": "http://localhost:8001",
    }
    node = AgentNode.objects.get(pk="writer")
    assert node.reasoners[0]["input_schema"] == {"type": "object"}
    assert node.kind_of("draft") == "reasoner" and node.kind_of("spell") == "skill"
    response = api.post("/api/v1/nodes", {**SDK_BODY, "version": "1.3.0", "base_url": "http://writer-svc:8002"}, format="json")
    assert response.status_code == 201, "POST /api/v1/nodes is an alias"
    node.refresh_from_db()
    assert (node.version, node.base_url) == ("1.3.0", "http://writer-svc:8002"), "bare service names are fine"
    assert _types() == ["node.registered", "node.registered"]


@pytest.mark.parametrize(
    "body",
    [{}, {"id": "x"}, {"id": "a.b", "base_url": URL}, {"id": "x", "base_url": "ftp://h.example"},
     {"id": "x", "base_url": "not a url"}, {"id": "x", "base_url": "http://u:p@h:1"},
     {"id": "x", "base_url": "http://h:port"}, {"id": "x", "base_url": URL, "reasoners": "nope"},
     {"id": "x", "base_url": URL, "reasoners": [1]}, {"id": "x", "base_url": URL, "reasoners": [{"id": 5}]},
     {"id": "x", "base_url": URL, "reasoners": [{"id": "a.b"}]}, {"id": "x", "base_url": URL, "metadata": []},
     {"id": "x", "base_url": URL, "skills": [{"id": "a/b"}]}, {"id": 7, "base_url": URL}, [1, 2]],
)
def test_bad_registrations_are_400(api, body):
    response = api.post("/api/v1/nodes/register", body, format="json")
    assert response.status_code == 400
    assert response.json()["error"] == "bad_request" and response.json()["message"]
    assert not AgentNode.objects.exists()


def test_heartbeat_shutdown_and_back(api):
    api.post("/api/v1/nodes/register", SDK_BODY, format="json")
    response = api.post("/api/v1/nodes/writer/heartbeat",
                        {"status": "ready", "timestamp": "2026-01-01T00:00:00Z", "version": "1.2.0", "instance_id": "i-1"},
                        format="json")
    assert response.status_code == 200
    assert response.json()["success"] is True and response.json()["message"] == "heartbeat received"
    assert response.json()["timestamp"]
    assert AgentNode.objects.get(pk="writer").lifecycle_status == "ready"
    response = api.post("/api/v1/nodes/writer/shutdown", format="json")
    assert response.status_code == 200 and response.json()["success"] is True
    assert AgentNode.objects.get(pk="writer").health_status == "inactive"
    api.post("/api/v1/nodes/writer/heartbeat", {"status": "ready"}, format="json")
    assert AgentNode.objects.get(pk="writer").health_status == "active"
    assert _types() == ["node.registered", "node.offline", "node.online"]


def test_a_beat_saying_offline_takes_the_node_offline_and_never_back_online(api):
    # The SDK's status once SIGTERM came: such a beat after the shutdown brought the node
    # back online, to be sent work it would never do.
    api.post("/api/v1/nodes/register", SDK_BODY, format="json")
    beat = api.post("/api/v1/nodes/writer/heartbeat", {"status": "offline"}, format="json")
    assert beat.status_code == 200 and beat.json()["message"] == "heartbeat received"
    assert AgentNode.objects.get(pk="writer").health_status == "inactive"
    api.post("/api/v1/nodes/writer/shutdown", format="json")
    api.post("/api/v1/nodes/writer/heartbeat", {"status": "offline"}, format="json")
    assert AgentNode.objects.get(pk="writer").health_status == "inactive"
    offline = PlatformEvent.objects.get(type="node.offline")
    assert offline.data["reason"] == "heartbeat_offline"
    api.post("/api/v1/nodes/writer/heartbeat", {"status": "ready"}, format="json")
    assert AgentNode.objects.get(pk="writer").health_status == "active"
    assert _types() == ["node.registered", "node.offline", "node.online"]


def test_unknown_node_heartbeat_and_shutdown_are_404(api):
    assert api.post("/api/v1/nodes/ghost/heartbeat", {}, format="json").status_code == 404
    assert api.post("/api/v1/nodes/ghost/shutdown", {}, format="json").status_code == 404
    assert api.get("/api/v1/nodes/ghost").json()["error"] == "not_found"


def test_list_and_get(api):
    api.post("/api/v1/nodes/register", SDK_BODY, format="json")
    listed = json_of(api.get("/api/v1/nodes"))
    assert listed["count"] == 1
    doc = api.get("/api/v1/nodes/writer").json()
    assert listed["nodes"][0] == doc
    assert doc["id"] == "writer" and doc["health_status"] == "active" and doc["last_heartbeat"]
    assert doc["reasoners"][0]["id"] == "draft" and doc["skills"][0]["id"] == "spell"


def test_silent_nodes_go_offline_once(api, settings):
    settings.NODE_OFFLINE_AFTER = 30
    api.post("/api/v1/nodes/register", SDK_BODY, format="json")
    assert nodes.mark_silent_nodes_offline() == 0
    AgentNode.objects.update(last_heartbeat=timezone.now() - timedelta(seconds=31))
    assert nodes.mark_silent_nodes_offline() == 1
    assert nodes.mark_silent_nodes_offline() == 0
    offline = PlatformEvent.objects.get(type="node.offline")
    assert offline.agent_node_id == "writer" and offline.data["reason"] == "heartbeat_missed"
    api.post("/api/v1/nodes/writer/heartbeat", {}, format="json")
    assert PlatformEvent.objects.filter(type="node.online").count() == 1


def test_did_register_is_a_json_404(api):
    response = api.post("/api/v1/did/register", {"agent_node_id": "writer", "reasoners": [], "skills": []}, format="json")
    assert response.status_code == 404
    assert response.json()["error"] == "not_supported"


def test_one_agent_key_registers_at_most_its_share_of_nodes(settings):
    """AGENT_MAX_NODES_PER_KEY: past it a new node is 409; re-registering one it has is not."""
    from rest_framework.test import APIClient

    from agentfield_site.models import ApiKey

    settings.AGENT_MAX_NODES_PER_KEY = 2
    agent = APIClient()
    agent.credentials(HTTP_X_API_KEY=ApiKey.create("fleet", ApiKey.Scope.AGENT)[1])

    def register(node_id: str):
        body = {"id": node_id, "base_url": "http://127.0.0.1:9", "reasoners": [{"id": "r"}]}
        return agent.post("/api/v1/nodes/register", body, format="json")

    assert [register(n).status_code for n in ("n1", "n2")] == [201, 201]
    refused = register("n3")
    assert refused.status_code == 409 and "AGENT_MAX_NODES_PER_KEY" in refused.json()["message"]
    assert register("n1").status_code in (200, 201), "re-registering a node it has is not a new one"
    assert not AgentNode.objects.filter(pk="n3").exists()
