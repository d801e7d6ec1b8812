"""API keys guard every node and execution endpoint once configured."""

import pytest

pytestmark = pytest.mark.django_db

ROUTES = [
    ("post", "/api/v1/nodes/register"),
    ("post", "/api/v1/nodes"),
    ("get", "/api/v1/nodes"),
    ("get", "/api/v1/nodes/analyzer"),
    ("post", "/api/v1/nodes/analyzer/heartbeat"),
    ("post", "/api/v1/nodes/analyzer/shutdown"),
    ("post", "/api/v1/did/register"),
    ("post", "/api/v1/workflow/executions/events"),
    ("post", "/api/v1/execute/async/analyzer.process"),
    ("post", "/api/v1/execute/analyzer.process"),
    ("get", "/api/v1/executions"),
    ("post", "/api/v1/executions/batch-status"),
    ("get", "/api/v1/executions/exec_1"),
    ("post", "/api/v1/executions/exec_1/status"),
    ("post", "/api/v1/executions/exec_1/logs"),
    ("post", "/api/v1/executions/note"),
    ("post", "/api/v1/executions/exec_1/cancel"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_without_a_key_401(api, node, settings, method, path):
    settings.API_KEYS = ["k1"]
    response = getattr(api, method)(path, {}, format="json") if method == "post" else api.get(path)
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"
    wrong = api.get(path, headers={"X-API-Key": "nope"}) if method == "get" else api.post(
        path, {}, format="json", headers={"X-API-Key": "nope"})
    assert wrong.status_code == 401


def test_each_way_of_sending_the_key(api, node, settings):
    settings.API_KEYS = ["k1"]
    assert api.get("/api/v1/nodes", headers={"X-API-Key": "k1"}).status_code == 200
    assert api.get("/api/v1/nodes", headers={"Authorization": "Bearer k1"}).status_code == 200
    assert api.get("/api/v1/nodes?api_key=k1").status_code == 200
    response = api.post("/api/v1/execute/async/analyzer.process", {}, format="json", headers={"X-API-Key": "k1"})
    assert response.status_code == 202


def test_open_without_configured_keys(api, node, settings):
    settings.API_KEYS = []
    assert api.get("/api/v1/nodes").status_code == 200
