"""The observability webhook settings API: one configuration, the secret never returned."""

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from observability.models import ForwarderConfig, ForwarderDeadLetter

BASE = "/api/v1/settings/observability-webhook"


@pytest.fixture
def api(settings) -> APIClient:
    settings.WEBHOOK_ALLOWED_HOSTS = ["collector.local"]
    settings.API_KEYS = []
    return APIClient()


@pytest.mark.django_db
def test_get_post_delete(api):
    assert api.get(BASE).json() == {"configured": False}

    response = api.post(
        BASE, {"url": "http://collector.local/in", "secret": "top-secret"}, format="json"
    )
    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True and body["message"]
    config = body["config"]
    assert config["url"] == "http://collector.local/in"
    assert config["has_secret"] is True
    assert config["enabled"] is True, "enabled defaults to true"
    assert config["event_types"] == ["*"], "every event by default"
    assert config["headers"] == {}
    assert config["created_at"] and config["updated_at"]
    assert "top-secret" not in response.content.decode()

    got = api.get(BASE)
    assert got.json() == {"configured": True, "config": config}
    assert "secret" not in got.json()["config"]
    assert "top-secret" not in got.content.decode()

    response = api.delete(BASE)
    assert response.status_code == 200 and response.json()["success"] is True
    assert api.get(BASE).json() == {"configured": False}
    assert api.delete(BASE).json()["success"] is True, "deleting nothing is fine"


@pytest.mark.django_db
def test_the_longest_secret_is_kept_and_a_longer_one_is_400(api):
    """Secrets may be 4096 characters (`outbound.clean_secret`); the column held 512: a 500 on PostgreSQL."""
    longest = "s" * 4096
    response = api.post(BASE, {"url": "http://collector.local/in", "secret": longest}, format="json")
    assert response.status_code == 200, response.content
    assert ForwarderConfig.current().secret == longest
    response = api.post(BASE, {"url": "http://collector.local/in", "secret": longest + "s"}, format="json")
    assert response.status_code == 400 and response.json()["error"] == "bad_request"
    assert ForwarderConfig.current().secret == longest


@pytest.mark.django_db
def test_an_omitted_secret_keeps_the_old_one_and_an_empty_one_removes_it(api):
    api.post(BASE, {"url": "http://collector.local/a", "secret": "one"}, format="json")
    response = api.post(
        BASE,
        {
            "url": "http://collector.local/b",
            "headers": {"Authorization": "Bearer collector-token"},
            "enabled": False,
            "event_types": ["execution.*", "node.online"],
        },
        format="json",
    )
    config = response.json()["config"]
    assert config["has_secret"] is True
    assert ForwarderConfig.current().secret == "one"
    assert (config["url"], config["enabled"]) == ("http://collector.local/b", False)
    assert config["event_types"] == ["execution.*", "node.online"]
    # Header values are write-only, as the secret is (and as a subscription's are).
    assert config["headers"] == {"Authorization": "***"}
    assert api.get(BASE).json()["config"]["headers"] == {"Authorization": "***"}
    assert ForwarderConfig.current().headers == {"Authorization": "Bearer collector-token"}

    config = api.post(
        BASE, {"url": "http://collector.local/b", "secret": ""}, format="json"
    ).json()["config"]
    assert config["has_secret"] is False
    assert config["headers"] == {}


@pytest.mark.django_db
def test_headers_sent_back_as_read_keep_their_values(api):
    api.post(BASE, {"url": "http://collector.local/a", "headers": {"Authorization": "Bearer t", "X-Team": "ops"}},
             format="json")
    read = api.get(BASE).json()["config"]
    assert read["headers"] == {"Authorization": "***", "X-Team": "***"}
    changed = {"Authorization": read["headers"]["Authorization"], "x-team": "dev"}
    config = api.post(BASE, {"url": read["url"], "headers": changed}, format="json").json()["config"]
    assert config["headers"] == {"Authorization": "***", "x-team": "***"}
    assert ForwarderConfig.current().headers == {"Authorization": "Bearer t", "x-team": "dev"}


@pytest.mark.django_db
def test_the_mask_where_no_value_is_stored_is_refused_not_sent_as_the_credential(api):
    """A read copied from another deployment, or a header added as "***": the collector would get "***"."""
    first = api.post(BASE, {"url": "http://collector.local/a", "headers": {"Authorization": "***"}}, format="json")
    assert first.status_code == 400 and first.json()["error"] == "bad_request"
    assert "Authorization" in first.json()["message"] and "send the value itself" in first.json()["message"]
    assert api.get(BASE).json() == {"configured": False}

    api.post(BASE, {"url": "http://collector.local/a", "headers": {"Authorization": "Bearer t"}}, format="json")
    added = api.post(BASE, {"url": "http://collector.local/a", "headers": {"Authorization": "***", "X-Team": "***"}},
                     format="json")
    assert added.status_code == 400 and "X-Team" in added.json()["message"]
    assert "Authorization" not in added.json()["message"], "the mask of a stored value is still taken"
    assert ForwarderConfig.current().headers == {"Authorization": "Bearer t"}, "nothing changed"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "word"),
    [
        ({}, "url is required"),
        ({"url": "ftp://collector.local/x"}, "scheme"),
        ({"url": "http://user:pw@collector.local/x"}, "credentials"),
        ({"url": "http://127.0.0.1:9000/x"}, "loopback"),
        ({"url": "http://169.254.169.254/latest"}, "link-local"),
        ({"url": "http://10.0.0.5/x"}, "private"),
        ({"url": "http://collector.local/x", "headers": ["X-A"]}, "headers"),
        ({"url": "http://collector.local/x", "headers": {"X-A": True}}, "string value"),
        ({"url": "http://collector.local/x", "headers": {"bad name": "v"}}, "may only hold"),
        ({"url": "http://collector.local/x", "headers": {"X-A": "a\r\nInjected: 1"}}, "control"),
        ({"url": "http://collector.local/x", "headers": {"X-A": "v" * 513}}, "longer than 512"),
        ({"url": "http://collector.local/x", "headers": {f"X-{i}": "v" for i in range(21)}}, "at most 20"),
        ({"url": "http://collector.local/x", "headers": {"webhook-signature": "v1,x"}}, "reserved"),
        ({"url": "http://collector.local/x", "headers": {"Content-Type": "text/plain"}}, "reserved"),
        ({"url": "http://collector.local/x", "event_types": "execution.*"}, "event_types"),
        ({"url": "http://collector.local/x", "event_types": []}, "at least one"),
        ({"url": "http://collector.local/x", "event_types": ["exec ution"]}, "pattern"),
        ({"url": "http://collector.local/x", "event_types": [f"t{i}.*" for i in range(51)]}, "at most 50"),
        ({"url": "http://collector.local/x", "enabled": "yes"}, "enabled"),
        ({"url": "http://collector.local/x", "secret": 5}, "secret"),
        ({"url": "http://collector.local/x", "colour": "red"}, "Unknown fields"),
    ],
)
def test_bad_input_is_a_clear_400(api, body, word):
    response = api.post(BASE, body, format="json")
    assert response.status_code == 400, response.content
    error = response.json()
    assert error["error"] == "bad_request"
    assert word in error["message"]
    assert api.get(BASE).json() == {"configured": False}


@pytest.mark.django_db
def test_malformed_json_and_non_objects_are_400(api):
    response = api.post(BASE, "{not json", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_json"
    response = api.post(BASE, [1, 2], format="json")
    assert response.status_code == 400
    assert response.json()["error"] == "bad_request"



@pytest.mark.django_db
@pytest.mark.parametrize(("body", "error"), [(b"{", "invalid_json"), (b'"\\ud800"', "invalid_json"),
                                             (b"[1]", "bad_request")])
def test_the_actions_refuse_a_body_that_is_not_a_json_object_and_do_nothing(api, body, error):
    # They removed the configuration, cleared or redrove the dead letters all the same.
    assert api.post(BASE, {"url": "http://collector.local/x"}, format="json").status_code == 200
    ForwarderDeadLetter.objects.create(event_id=1, event_type="execution.created", event_source="execution",
                                       event_timestamp=timezone.now(), payload={"id": 1}, error_message="collector down")
    for method, path in (("delete", BASE), ("delete", f"{BASE}/dlq"), ("post", f"{BASE}/redrive")):
        response = getattr(api, method)(path, body, content_type="application/json")
        assert response.status_code == 400 and response.json()["error"] == error, (path, response.content)
    assert api.get(BASE).json()["configured"] is True
    assert ForwarderDeadLetter.objects.count() == 1
    # No body is what they take.
    assert api.delete(f"{BASE}/dlq").json()["removed"] == 1
    assert api.delete(BASE).status_code == 200 and api.get(BASE).json() == {"configured": False}

@pytest.mark.django_db
def test_status_without_a_configuration(api):
    status = api.get(f"{BASE}/status").json()
    assert status["enabled"] is False
    assert status["webhook_url"] is None
    assert (status["backlog"], status["events_forwarded"], status["dead_letter_count"]) == (0, 0, 0)
    assert status["last_forwarded_at"] is None and status["last_error"] is None


@pytest.mark.django_db
def test_api_keys_are_enforced(api, settings):
    settings.API_KEYS = ["k1"]
    assert api.get(BASE).status_code == 401
    assert api.get(BASE, HTTP_X_API_KEY="k1").status_code == 200
    assert api.get(f"{BASE}/dlq", HTTP_AUTHORIZATION="Bearer k1").status_code == 200
