import socket

import pytest
from django.db import connection


@pytest.mark.django_db
def test_health_answers_without_credentials(client, settings):
    settings.API_KEYS = ["k1"]
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json()["status"] == "healthy"


@pytest.mark.django_db(transaction=True)  # the test reconnects, which a test transaction would not survive
def test_database_down_is_a_503_without_the_driver_text(client, tmp_path, caplog):
    saved = dict(connection.settings_dict)
    # PostgreSQL's connection pool holds connections opened before the database "went
    # down": a fresh pool, that gives up after a second, must find it down.
    pool = saved.get("OPTIONS", {}).get("pool")
    connection.close()
    if pool:
        connection.close_pool()
    if connection.vendor == "sqlite":
        connection.settings_dict["NAME"] = str(tmp_path / "no-such-dir" / "db.sqlite3")
    else:
        with socket.socket() as sock:  # a port nobody listens on: connection refused
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        connection.settings_dict.update(HOST="127.0.0.1", PORT=str(port))
        if pool:
            connection.settings_dict["OPTIONS"] = {**saved["OPTIONS"], "pool": {**pool, "timeout": 1}}
    try:
        response = client.get("/health")
    finally:
        connection.close()
        if pool:
            connection.close_pool()
        connection.settings_dict.update(saved)
    assert response.status_code == 503
    assert response.json() == {"status": "unhealthy", "database": "unavailable"}
    # Operators still get the driver's reason, in the log.
    record = next(r for r in caplog.records if r.name == "agentfield_site.views")
    assert record.exc_info is not None and str(record.exc_info[1])


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
