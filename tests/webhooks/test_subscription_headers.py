"""Subscription custom headers are write-only: names with masked values on every read, the real values on the wire."""

import pytest
from django.contrib.admin.utils import quote
from rest_framework.test import APIClient

from devtools.loopback import LoopbackServer
from webhooks import subscriptions
from webhooks.models import Subscription
from webhooks.tasks import send_due

pytestmark = pytest.mark.django_db

TOKEN = "Bearer sub-header-" + "0123456789abcdef"


def test_headers_are_masked_on_every_read_and_kept_when_sent_back_masked():
    api = APIClient()
    created = api.post("/api/v1/webhooks/subscriptions", {
        "url": "https://hooks.example.com/h", "event_types": ["*"],
        "headers": {"Authorization": TOKEN, "X-Tenant": "t-1"}}, format="json")
    assert created.status_code == 201
    sub_id = created.json()["id"]
    for response in (created, api.get(f"/api/v1/webhooks/subscriptions/{sub_id}"),
                     api.get("/api/v1/webhooks/subscriptions")):
        assert TOKEN not in response.content.decode() and "t-1" not in response.content.decode()
    assert created.json()["headers"] == {"Authorization": "***", "X-Tenant": "***"}
    # A client that sends back what it read changes only what it really changed.
    read = api.get(f"/api/v1/webhooks/subscriptions/{sub_id}").json()
    patched = api.patch(f"/api/v1/webhooks/subscriptions/{sub_id}",
                        {"headers": {**read["headers"], "X-Tenant": "t-2"}}, format="json")
    assert patched.status_code == 200 and patched.json()["headers"] == {"Authorization": "***", "X-Tenant": "***"}
    assert Subscription.objects.get(pk=sub_id).headers == {"Authorization": TOKEN, "X-Tenant": "t-2"}
    # Header names are case-insensitive: the mask sent back in another case still keeps the secret.
    lower = api.patch(f"/api/v1/webhooks/subscriptions/{sub_id}",
                      {"headers": {"authorization": "***", "x-tenant": "t-3"}}, format="json")
    assert lower.status_code == 200
    assert Subscription.objects.get(pk=sub_id).headers == {"authorization": TOKEN, "x-tenant": "t-3"}


def test_the_mask_where_no_value_is_stored_is_refused_not_sent_as_the_credential():
    api = APIClient()
    refused = api.post("/api/v1/webhooks/subscriptions", {
        "url": "https://hooks.example.com/h", "event_types": ["*"], "headers": {"Authorization": "***"}}, format="json")
    assert refused.status_code == 400 and "send the value itself" in refused.json()["message"]
    assert not Subscription.objects.exists()

    sub, _ = subscriptions.create(url="https://hooks.example.com/h", event_types=["*"], headers={"Authorization": TOKEN})
    added = api.patch(f"/api/v1/webhooks/subscriptions/{sub.id}",
                      {"headers": {"Authorization": "***", "X-Tenant": "***"}}, format="json")
    assert added.status_code == 400 and "X-Tenant" in added.json()["message"]
    assert Subscription.objects.get(pk=sub.id).headers == {"Authorization": TOKEN}, "nothing changed"


def test_the_admin_shows_header_names_only(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("ops", "ops@example.com", "pw-for-tests"))
    sub, _ = subscriptions.create(url="https://hooks.example.com/h", event_types=["*"], headers={"Authorization": TOKEN})
    page = client.get(f"/admin/webhooks/subscription/{quote(sub.pk)}/change/")
    assert page.status_code == 200
    text = page.content.decode()
    assert "Authorization" in text and TOKEN not in text


def test_the_receiver_gets_the_real_value(settings):
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    with LoopbackServer() as receiver:
        sub, _ = subscriptions.create(url=receiver.url, event_types=["*"], headers={"Authorization": TOKEN})
        subscriptions.send_test(sub)
        send_due()
        assert receiver.requests and receiver.requests[0].headers["Authorization"] == TOKEN
