"""Bad input as a new user would try it: clear 4xx JSON, never a 500, nothing half-written."""

import pytest

from executions.models import Execution
from observability.models import PlatformEvent

pytestmark = pytest.mark.django_db

URL = "/api/v1/execute/async/analyzer.process"


def _post_raw(client, url: str, data: bytes | str, content_type: str = "application/json"):
    return client.generic("POST", url, data, content_type=content_type)


def _assert_nothing_written():
    assert not Execution.objects.exists()
    assert not PlatformEvent.objects.filter(source="execution").exists()


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"{not json", "invalid_json"),
        (b'{"input": "hello"}', "bad_request"),
        (b'{"input": [1, 2]}', "bad_request"),
        (b'{"input": {}, "context": "x"}', "bad_request"),
        (b"[1, 2]", "bad_request"),
        (b'"just a string"', "bad_request"),
    ],
)
def test_malformed_bodies(client, node, body, error):
    for url in (URL, "/api/v1/execute/analyzer.process"):
        response = _post_raw(client, url, body)
        assert response.status_code == 400, response.content
        assert response.json()["error"] == error and response.json()["message"]
    _assert_nothing_written()


@pytest.mark.parametrize("target", ["analyzer", ".process", "analyzer.", "nodot"])
def test_target_without_a_dot(client, node, target):
    response = _post_raw(client, f"/api/v1/execute/async/{target}", b"{}")
    assert response.status_code == 400
    assert response.json()["error"] == "bad_request" and "node_id.reasoner_or_skill" in response.json()["message"]
    _assert_nothing_written()


def test_unknown_node(client, node):
    response = _post_raw(client, "/api/v1/execute/async/ghost.process", b"{}")
    assert response.status_code == 404 and response.json()["error"] == "not_found"
    _assert_nothing_written()


def test_body_over_the_limit_is_413(client, node, settings):
    settings.MAX_BODY_BYTES = 1024
    big = b'{"input": {"document": "' + b"x" * 2048 + b'"}}'
    response = _post_raw(client, URL, big)
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"
    _assert_nothing_written()


def test_wrong_content_type_is_415(client, node):
    response = _post_raw(client, URL, b"input=1", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415 and response.json()["message"]
    _assert_nothing_written()


@pytest.mark.parametrize(
    ("webhook", "why"),
    [
        ({"url": "http://user:pass@127.0.0.1:9/h"}, "credential"),
        ({"url": "javascript:alert(1)"}, "scheme"),
        ({"url": "ftp://127.0.0.1/h"}, "scheme"),
        ({"url": "http://127.0.0.1:9/h", "headers": {"X-Evil": "a\r\nInjected: 1"}}, "control"),
        ({"url": "http://127.0.0.1:9/h", "headers": {"X-Evil\n": "a"}}, "may only hold"),
        ({"url": "http://127.0.0.1:9/h", "headers": {"X-AgentField-Signature": "x"}}, "reserved"),
        ({"url": "http://127.0.0.1:9/h", "headers": {f"X-{i}": "v" for i in range(21)}}, "20"),
        ({"url": "http://127.0.0.1:9/h", "secret": "s" * 4097}, "secret"),
        ("http://127.0.0.1:9/h", "object"),
    ],
)
def test_bad_webhooks_are_reported_not_fatal(client, node, settings, webhook, why):
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    response = client.post(URL, {"input": {}, "webhook": webhook}, content_type="application/json")
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["webhook_registered"] is False
    assert why in body["webhook_error"].lower(), body["webhook_error"]
    row = Execution.objects.get(pk=body["execution_id"])
    assert row.webhook_url == "" and row.webhook_secret == "" and not row.webhook_registered


def test_blocked_address_webhook(client, node, settings):
    settings.WEBHOOK_ALLOWED_HOSTS = []
    response = client.post(URL, {"input": {}, "webhook": {"url": "http://127.0.0.1:9/h"}}, content_type="application/json")
    assert response.status_code == 202
    assert response.json()["webhook_registered"] is False and response.json()["webhook_error"]


def test_the_longest_run_id_is_taken_and_logged(client, node):
    """The event log's workflow_id held 64 characters: an X-Run-ID of 65 to 128 was a 500 on PostgreSQL."""
    run_id = "r" * 128
    response = client.post(URL, {}, content_type="application/json", headers={"X-Run-ID": run_id})
    assert response.status_code == 202, response.content
    assert response.json()["workflow_id"] == run_id
    assert PlatformEvent.objects.get(type="execution.created").workflow_id == run_id
    listed = client.get(f"/api/v1/executions?workflow_id={run_id}").json()
    assert [e["execution_id"] for e in listed["results"]] == [response.json()["execution_id"]]


def test_oversized_id_headers_are_400(client, node):
    response = client.post(URL, {}, content_type="application/json", headers={"X-Run-ID": "r" * 200})
    assert response.status_code == 400 and "X-Run-ID" in response.json()["message"]
    _assert_nothing_written()


@pytest.mark.parametrize("header", ["X-Run-ID", "X-Session-ID", "X-Actor-ID", "Idempotency-Key"])
def test_id_headers_with_a_control_character_are_400(client, node, header):
    # Stored, shown, and sent on to the agent as headers.
    response = client.post(URL, {}, content_type="application/json", headers={header: "s\x01x"})
    assert response.status_code == 400, response.content
    assert response.json()["message"].endswith(f"{header} holds a control character.")
    _assert_nothing_written()
