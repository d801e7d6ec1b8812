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


@pytest.mark.django_db
def test_database_failure_is_a_json_503_not_a_500(client, monkeypatch):
    from django.db import OperationalError

    from executions.api import views

    def locked(*args, **kwargs):
        raise OperationalError("database is locked")

    monkeypatch.setattr(views.submission, "submit", locked)
    response = client.post(
        "/api/v1/execute/async/analyzer.process", {"input": {}}, content_type="application/json"
    )
    assert response.status_code == 503
    assert response.json()["error"] == "unavailable"
    assert response["Retry-After"] == "1"
