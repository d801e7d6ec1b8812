"""Subscriptions: CRUD, secrets shown once, rotation, test send, fan-out, auto-disable."""

import json
from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone
from rest_framework.test import APIClient
from standardwebhooks import Webhook

from devtools.loopback import LoopbackServer, Reply
from observability.events import publish
from observability.models import PlatformEvent
from tests.webhooks.conftest import enqueue, send_now
from webhooks import delivery, destinations, subscriptions
from webhooks.models import Delivery, Destination, Subscription, SubscriptionSecret

pytestmark = pytest.mark.django_db
BASE = "/api/v1/webhooks/subscriptions"


@pytest.fixture
def api() -> APIClient:
    return APIClient()


def create(api: APIClient, url: str, event_types: list[str]) -> dict:
    response = api.post(BASE, {"url": url, "event_types": event_types, "description": "ops"}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def test_crud_and_secret_shown_once(api):
    created = create(api, "http://127.0.0.1:9/a", ["execution.*"])
    assert created["secret"].startswith("whsec_") and created["id"].startswith("sub_")
    assert set(created) >= {"id", "url", "description", "event_types", "headers", "enabled", "disabled_reason", "created_at"}
    detail = api.get(f"{BASE}/{created['id']}").json()
    assert "secret" not in detail and detail["event_types"] == ["execution.*"]
    assert [s["id"] for s in api.get(BASE).json()] == [created["id"]]
    patched = api.patch(f"{BASE}/{created['id']}", {"event_types": ["node.*"]}, format="json")
    assert patched.status_code == 200 and patched.json()["event_types"] == ["node.*"]
    assert api.delete(f"{BASE}/{created['id']}").status_code == 204
    assert api.get(f"{BASE}/{created['id']}").status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {"url": "http://10.0.0.1/", "event_types": ["*"]},
        {"url": "http://127.0.0.1:9/", "event_types": []},
        {"url": "http://127.0.0.1:9/", "event_types": ["*"], "headers": {"Host": "x"}},
        {"event_types": ["*"]},
        {"url": "http://127.0.0.1:9/", "event_types": ["*************zz"]},
        {"url": "http://127.0.0.1:9/", "event_types": ["\u202e"]},
        {"url": "http://127.0.0.1:9/", "event_types": ["x" * 65]},
    ],
)
def test_bad_subscription_is_a_clear_400(api, body):
    response = api.post(BASE, body, format="json")
    assert response.status_code == 400
    assert response.json()["error"] == "bad_request" and response.json()["message"]


def test_matching_events_delivered_in_the_same_transaction(api):
    with LoopbackServer() as receiver:
        sub = create(api, receiver.url, ["execution.completed", "node.*"])
        with pytest.raises(RuntimeError), transaction.atomic():
            publish("execution.completed", execution_id="exec_rolled_back")
            raise RuntimeError("rolled back: no event, no delivery")
        assert not Delivery.objects.exists()
        with transaction.atomic():
            event = publish("execution.completed", execution_id="exec_9", status="succeeded", data={"target": "a.b"})
            publish("node.online", agent_node_id="analyzer")
            publish("execution.started", execution_id="exec_9")
            assert Delivery.objects.filter(subscription_id=sub["id"]).count() == 2
        delivery.send_due()
    assert len(receiver.requests) == 2
    [first] = [r for r in receiver.requests if b'"execution.completed"' in r.body]
    document = Webhook(sub["secret"]).verify(first.body, first.headers)
    assert document == {**event.as_document(), "data": {"target": "a.b"}}
    assert document["type"] == "execution.completed"


def test_webhook_events_do_not_loop(api):
    with LoopbackServer() as receiver:
        create(api, receiver.url, ["*"])
        with transaction.atomic():
            publish("execution.completed", execution_id="exec_l")
        for _ in range(5):
            delivery.send_due()
    # execution.completed, then webhook.delivered about it; never webhook.delivered about that one.
    types = sorted(json.loads(r.body)["type"] for r in receiver.requests)
    assert types == ["execution.completed", "webhook.delivered"]
    assert PlatformEvent.objects.filter(type="webhook.delivered").count() == 2


def test_rotation_old_secret_signs_for_24h(api):
    with LoopbackServer() as receiver:
        sub = create(api, receiver.url, ["*"])
        rotated = api.post(f"{BASE}/{sub['id']}/rotate-secret").json()
        assert rotated["secret"] != sub["secret"]
        response = api.post(f"{BASE}/{sub['id']}/test")
        assert response.status_code == 202 and response.json()["status"] == "queued"
        delivery.send_due()
        [req] = receiver.requests
        for secret in (sub["secret"], rotated["secret"]):
            assert Webhook(secret).verify(req.body, req.headers)["type"] == "webhook.test"
        assert json.loads(req.body)["id"] == 0  # an integer, as every event document's id
        Subscription.objects.get(id=sub["id"]).secrets.exclude(expires_at=None).update(
            expires_at=timezone.now() - timedelta(seconds=1)
        )
        api.post(f"{BASE}/{sub['id']}/test")
        delivery.send_due()
    assert len(receiver.requests[1].headers["webhook-signature"].split(" ")) == 1
    Webhook(rotated["secret"]).verify(receiver.requests[1].body, receiver.requests[1].headers)


def test_rotating_in_a_loop_keeps_only_the_latest_secrets_signing(api):
    # Each active secret is one more HMAC of the body on every attempt, and one more
    # signature in the header: rotating a thousand times must not cost a thousand.
    with LoopbackServer() as receiver:
        sub = create(api, receiver.url, ["*"])
        rotated = [api.post(f"{BASE}/{sub['id']}/rotate-secret").json()["secret"] for _ in range(12)]
        api.post(f"{BASE}/{sub['id']}/test")
        delivery.send_due()
    [req] = receiver.requests
    assert len(req.headers["webhook-signature"].split(" ")) == 5  # subscriptions.MAX_ACTIVE_SECRETS
    for secret in rotated[-5:]:
        Webhook(secret).verify(req.body, req.headers)
    assert Subscription.objects.get(id=sub["id"]).secrets.count() == 5  # subscriptions.MAX_ACTIVE_SECRETS


def test_test_send_has_no_retries(api):
    with LoopbackServer(default=Reply(500)) as receiver:
        sub = create(api, receiver.url, ["*"])
        api.post(f"{BASE}/{sub['id']}/test")
        for _ in range(3):
            delivery.send_due()
    row = Delivery.objects.get(kind=Delivery.Kind.TEST)
    assert row.status == Delivery.Status.FAILED and row.attempts == 1 and len(receiver.requests) == 1


def test_410_disables_the_subscription(api):
    with LoopbackServer(default=Reply(410)) as receiver:
        sub = create(api, receiver.url, ["node.*"])
        with transaction.atomic():
            publish("node.online", agent_node_id="a")
        delivery.send_due()
        detail = api.get(f"{BASE}/{sub['id']}").json()
        assert detail["enabled"] is False and "410" in detail["disabled_reason"]
        assert Delivery.objects.get().status == Delivery.Status.DEAD
        subscriptions.invalidate_cache()
        with transaction.atomic():
            publish("node.online", agent_node_id="a")
        assert Delivery.objects.count() == 1  # disabled: nothing new
        assert [s["id"] for s in api.get(f"{BASE}?enabled=false").json()] == [sub["id"]]
        assert api.get(f"{BASE}?enabled=TRUE").json() == []
        garbage = api.get(f"{BASE}?enabled=garbage")  # not read as "no filter"
        assert garbage.status_code == 400 and "enabled" in garbage.content.decode(), garbage.content
        enabled = api.patch(f"{BASE}/{sub['id']}", {"enabled": True}, format="json").json()
        assert enabled["enabled"] is True and enabled["disabled_reason"] == ""


def test_disabled_after_days_of_failure(api, webhook_settings):
    webhook_settings.WEBHOOK_DISABLE_AFTER_DAYS = 2
    with LoopbackServer(default=Reply(500)) as receiver:
        sub = create(api, receiver.url, ["node.*"])
        Subscription.objects.filter(id=sub["id"]).update(failing_since=timezone.now() - timedelta(days=3))
        with transaction.atomic():
            publish("node.online", agent_node_id="a")
        delivery.send_due()
    detail = api.get(f"{BASE}/{sub['id']}").json()
    assert detail["enabled"] is False and "2 days" in detail["disabled_reason"]


def test_success_clears_the_failure_clock(api):
    with LoopbackServer(Reply(500)) as receiver:
        sub = create(api, receiver.url, ["node.*"])
        with transaction.atomic():
            publish("node.online", agent_node_id="a")
        delivery.send_due()
        assert Subscription.objects.get(id=sub["id"]).failing_since is not None
        row = Delivery.objects.get()
        Delivery.objects.filter(id=row.id).update(next_attempt_at=timezone.now())
        delivery.send_due()
    assert Subscription.objects.get(id=sub["id"]).failing_since is None


@pytest.mark.django_db(transaction=True)  # the foreign key is checked at a real commit
def test_subscription_deleted_while_its_delivery_is_in_flight(api):
    with LoopbackServer(Reply(200, delay=0.5)) as receiver:
        sub = create(api, receiver.url, ["node.*"])
        with transaction.atomic():
            publish("node.online", agent_node_id="a")
        token, rows = delivery.claim(10)
        results = send_now(token, rows)
        api.delete(f"{BASE}/{sub['id']}")
        assert delivery._record_surviving(results) == 0
    assert not Delivery.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_new_destination_written_beside_a_deleted_delivery_keeps_its_breaker(api):
    """The first write fails at its commit (the deleted delivery's attempt) and takes the new breaker row with it."""
    destinations._known.clear()
    with LoopbackServer(Reply(200, delay=0.5)) as receiver, LoopbackServer(default=Reply(503)) as failing:
        sub = create(api, receiver.url, ["node.*"])
        with transaction.atomic():
            publish("node.online", agent_node_id="a")
        row = enqueue(failing.url, execution_id="exec_new_destination")
        token, rows = delivery.claim(10)
        results = send_now(token, rows)
        api.delete(f"{BASE}/{sub['id']}")
        assert delivery._record_surviving(results) == 1
    assert Destination.objects.get(destination=row.destination).consecutive_failures == 1
    assert Delivery.objects.get().status == Delivery.Status.PENDING  # its retry is scheduled


def test_moving_the_url_moves_deliveries_not_yet_made(api):
    sub = create(api, "http://127.0.0.1:9/old", ["node.*"])
    with transaction.atomic():
        publish("node.online", agent_node_id="a")
    response = api.patch(f"{BASE}/{sub['id']}", {"url": "http://127.0.0.1:10/new"}, format="json")
    assert response.status_code == 200, response.content
    row = Delivery.objects.get(subscription_id=sub["id"])
    assert (row.url, row.destination) == ("http://127.0.0.1:10/new", "http://127.0.0.1:10")


def test_one_key_holds_at_most_the_configured_number_of_subscriptions(api, settings):
    from agentfield_site.models import ApiKey

    settings.WEBHOOK_MAX_SUBSCRIPTIONS_PER_KEY = 2
    raw = ApiKey.create("subscriber", "client")[1]
    other = ApiKey.create("another", "client")[1]
    body = {"url": "http://127.0.0.1:9/a", "event_types": ["execution.*"]}
    for _ in range(2):
        assert api.post(BASE, body, format="json", HTTP_X_API_KEY=raw).status_code == 201
    refused = api.post(BASE, body, format="json", HTTP_X_API_KEY=raw)
    assert refused.status_code == 409 and "WEBHOOK_MAX_SUBSCRIPTIONS_PER_KEY" in refused.json()["message"]
    assert api.post(BASE, body, format="json", HTTP_X_API_KEY=other).status_code == 201  # per key
    assert Subscription.objects.count() == 3


def test_a_client_subscription_never_hears_another_keys_subscription_deliveries():
    """An operator's subscription to everything delivers the client's executions: its webhook events (URL
    included) are the operator's, not the client's to hear."""
    from agentfield_site.models import ApiKey
    from executions.models import Execution

    client, ops = ApiKey.create("c", "client")[0], ApiKey.create("o", "admin")[0]
    theirs, _ = subscriptions.create(url="https://ops.example.com/T0K3N", event_types=["*"], headers={}, owner_id=ops.pk)
    mine, _ = subscriptions.create(url="https://c.example.com/h", event_types=["*"], headers={}, owner_id=client.pk)
    execution = Execution.objects.create(target="n.r", agent_node_id="n", reasoner_id="r", owner=client)
    with transaction.atomic():
        publish("execution.completed", execution_id=execution.id, status="succeeded")
        for sub in (theirs, mine):
            publish("webhook.delivered", execution_id=execution.id, status="delivered",
                    data={"subscription_id": sub.id, "url": sub.url, "event": "execution.completed"})
    heard = list(Delivery.objects.filter(subscription=mine).order_by("id"))
    assert [d.event_type for d in heard] == ["execution.completed", "webhook.delivered"]
    assert all(b"T0K3N" not in bytes(d.body) for d in heard)
    # The operator's subscription hears the client's executions, and the outcomes of its own deliveries only.
    assert [d.event_type for d in Delivery.objects.filter(subscription=theirs).order_by("id")] == [
        "execution.completed", "webhook.delivered"]


def test_many_subscriptions_do_not_multiply_each_others_outcomes(api):
    # Each subscription's failed delivery published webhook.failed, which went to every
    # subscription again: N + N² deliveries for one event (30,000 for a hundred).
    with LoopbackServer(default=Reply(500)) as receiver:
        subs = [create(api, f"{receiver.url}s{i}", ["*"]) for i in range(4)]
        with transaction.atomic():
            publish("execution.completed", execution_id="exec_storm", status="succeeded")
        for _ in range(5):
            delivery.send_due()  # the first attempts; retries are minutes away
    by_sub = {s["id"]: sorted(Delivery.objects.filter(subscription_id=s["id"]).values_list("event_type", flat=True))
              for s in subs}
    assert by_sub == {s["id"]: ["execution.completed", "webhook.failed"] for s in subs}, by_sub
    # Two outcome events a subscription (its two deliveries failed); the second is delivered to no one.
    failed = PlatformEvent.objects.filter(type="webhook.failed")
    assert sorted(e.data["subscription_id"] for e in failed) == sorted(s["id"] for s in subs for _ in range(2))


@pytest.mark.parametrize(("body", "error"), [(b"{", "invalid_json"), (b'{"x": "\\ud800"}', "invalid_json"),
                                             (b"[]", "bad_request"), (b'"go"', "bad_request")])
def test_an_action_refuses_a_body_that_is_not_a_json_object_and_does_nothing(api, body, error):
    sub = create(api, "http://127.0.0.1:9/a", ["*"])
    secrets = list(SubscriptionSecret.objects.filter(subscription_id=sub["id"]).values_list("secret", flat=True))
    enqueue(url="http://127.0.0.1:9/a", execution_id="exec_body")
    Delivery.objects.filter(execution_id="exec_body").update(status=Delivery.Status.DEAD)
    for path in (f"{BASE}/{sub['id']}/rotate-secret", f"{BASE}/{sub['id']}/test", "/api/v1/executions/exec_body/webhook/retry"):
        response = api.post(path, body, content_type="application/json")
        assert response.status_code == 400 and response.json()["error"] == error, (path, response.content)
    assert list(SubscriptionSecret.objects.filter(subscription_id=sub["id"]).values_list("secret", flat=True)) == secrets
    assert not Delivery.objects.filter(kind=Delivery.Kind.TEST).exists()
    assert Delivery.objects.get(execution_id="exec_body").status == Delivery.Status.DEAD
    # No body, or an empty object, is what these actions take.
    assert api.post(f"{BASE}/{sub['id']}/test").status_code == 202
    assert api.post(f"{BASE}/{sub['id']}/rotate-secret", {}, format="json").status_code == 200
    assert api.post("/api/v1/executions/exec_body/webhook/retry").status_code == 202
