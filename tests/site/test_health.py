import pytest


@pytest.mark.django_db
def test_health_answers_without_credentials(client, settings):
    settings.API_KEYS = ["k1"]
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json()["status"] == "healthy"


@pytest.mark.django_db
def test_unknown_api_route_is_json_404(client):
    response = client.get("/api/v1/nope")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def test_process_env_points_at_the_test_database(proc_env):
    assert proc_env.env["DATABASE_URL"]
    assert "agentfield-" in proc_env.env["DATABASE_URL"] or "test_" in proc_env.env["DATABASE_URL"]
