"""The admin as an operations console: deliveries with attempts, the DLQ, redrive, masked secrets."""

import json
import re
from datetime import timedelta

import pytest
from django.contrib.admin.utils import quote
from django.contrib.auth.models import User
from django.db import transaction
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from agentfield_site.lib.outbound import Outcome
from devtools.loopback import LoopbackServer, Reply
from observability.events import publish
from observability.models import PlatformEvent
from tests.webhooks.conftest import drain, enqueue
from webhooks import destinations, subscriptions
from webhooks.models import Delivery, Destination, Subscription

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(client):
    user = User.objects.create_superuser("alice", "alice@example.com", "pw")
    client.force_login(user)
    return client


def test_delivery_pages_search_and_redrive_action(staff):
    with LoopbackServer(default=Reply(410, body=b"gone")) as receiver:
        row = drain(enqueue(receiver.url, execution_id="exec_admin"))
        listing = staff.get("/admin/webhooks/delivery/", {"q": "exec_admin"})
        assert listing.status_code == 200 and row.webhook_id in listing.content.decode()
        by_destination = staff.get("/admin/webhooks/delivery/", {"status": "dead", "q": row.destination})
        assert by_destination.status_code == 200 and row.execution_id in by_destination.content.decode()
        detail = staff.get(f"/admin/webhooks/delivery/{row.id}/change/")
        assert detail.status_code == 200 and "gone" in detail.content.decode()  # the attempt, inline
        dlq = staff.get("/admin/webhooks/deadletter/")
        assert dlq.status_code == 200 and row.webhook_id in dlq.content.decode()
        receiver.default = Reply(200)
        response = staff.post(
            "/admin/webhooks/deadletter/", {"action": "redrive_selected", "_selected_action": [row.id]}, follow=True
        )
        assert "Queued 1 delivery." in response.content.decode()
        assert drain(row).status == Delivery.Status.DELIVERED
    assert staff.get("/admin/webhooks/deadletter/").content.decode().count(row.webhook_id) == 0


def test_subscription_admin_masks_the_secret(staff):
    sub, secret = subscriptions.create(url="http://127.0.0.1:9/", event_types=["*"], headers={})
    # Quoted as the admin's own links are: an id like "sub_22…" is otherwise read as an escape.
    response = staff.get(reverse("admin:webhooks_subscription_change", args=[quote(sub.id)]))
    assert response.status_code == 200
    page = response.content.decode()
    assert secret not in page and secret[-4:] in page


def test_delivery_list_columns_and_read_only_page(staff):
    with LoopbackServer(Reply(500)) as receiver:
        row = enqueue(receiver.url, execution_id="exec_cols")
        from webhooks import delivery

        delivery.send_due()
    row.refresh_from_db()
    assert row.status == Delivery.Status.PENDING and row.attempts == 1
    page = staff.get("/admin/webhooks/delivery/").content.decode()
    for column in ("column-execution_id", "column-destination", "column-attempts", "column-last_status",
                   "column-next_attempt"):
        assert column in page, column
    assert "exec_cols" in page and f"http://127.0.0.1:{receiver.port}" in page
    # Times to the second.
    assert re.search(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}", page)
    detail = staff.get(reverse("admin:webhooks_delivery_change", args=[quote(row.pk)])).content.decode()
    assert "attempt 1" in detail and f"attempt 1 of {row.pk}" not in detail
    assert 'name="_save"' not in detail and "deletelink" not in detail
    # High-cardinality columns are searched, not filtered (no SELECT DISTINCT list).
    assert "By target host" not in page and "By event type" not in page
    assert "exec_cols" in staff.get("/admin/webhooks/delivery/", {"q": row.destination}).content.decode()


def test_redrive_button_on_the_dead_letter_page(staff):
    with LoopbackServer(default=Reply(410)) as receiver:
        row = drain(enqueue(receiver.url, execution_id="exec_button"))
        assert row.status == Delivery.Status.DEAD
        page_url = reverse("admin:webhooks_deadletter_change", args=[quote(row.pk)])
        page = staff.get(page_url).content.decode()
        button_url = reverse("admin:webhooks_deadletter_redrive", args=[quote(row.pk)])
        assert f'action="{button_url}"' in page and 'id="redrive"' in page
        receiver.default = Reply(200)
        response = staff.post(button_url, follow=True)
        assert "is queued again" in response.content.decode()
        assert drain(row).status == Delivery.Status.DELIVERED
        assert {r.headers["webhook-id"] for r in receiver.requests} == {row.webhook_id}


def _subscription_form(**fields) -> dict:
    return {
        "url": "http://127.0.0.1:9/hook", "description": "", "event_types": '["execution.*"]',
        "enabled": "on", "secrets-TOTAL_FORMS": "0", "secrets-INITIAL_FORMS": "0", **fields,
    }


def test_subscription_added_in_the_admin_gets_a_secret_shown_once(staff, settings):
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    response = staff.post("/admin/webhooks/subscription/add/", _subscription_form(), follow=True)
    assert response.status_code == 200
    [sub] = Subscription.objects.all()
    [secret] = sub.secrets.values_list("secret", flat=True)
    assert secret.startswith("whsec_")
    assert secret in response.content.decode()
    change = staff.get(reverse("admin:webhooks_subscription_change", args=[quote(sub.id)])).content.decode()
    assert secret not in change


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"url": "ftp://127.0.0.1/hook"}, "url"),
        ({"url": "http://user:pw@127.0.0.1/hook"}, "url"),
        ({"url": "http://10.0.0.1/hook"}, "url"),
        ({"event_types": "[]"}, "event_types"),
        ({"event_types": '["\\ud800"]'}, "event_types"),
        ({"event_types": json.dumps(["x" * 65])}, "event_types"),
        ({"event_types": '["*a*b*c"]'}, "event_types"),
    ],
)
def test_subscription_admin_refuses_what_the_api_refuses(staff, settings, fields, problem):
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    response = staff.post("/admin/webhooks/subscription/add/", _subscription_form(**fields))
    assert response.status_code == 200  # the form again, with its errors
    assert "errorlist" in response.content.decode()
    assert not Subscription.objects.exists()
    api = APIClient().post(
        "/api/v1/webhooks/subscriptions",
        json.dumps({"url": fields.get("url", "http://127.0.0.1:9/hook"),
                    "event_types": json.loads(fields.get("event_types", '["x"]')), "headers": {}}),
        content_type="application/json",
    )
    assert api.status_code == 400


def test_subscription_change_form_validates_and_reenables(staff, settings):
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    sub, _ = subscriptions.create(url="http://127.0.0.1:9/", event_types=["*"], headers={})
    Subscription.objects.filter(pk=sub.pk).update(enabled=False, disabled_reason="The receiver answered 410 Gone.")
    change = reverse("admin:webhooks_subscription_change", args=[quote(sub.id)])
    bad = staff.post(change, _subscription_form(url="http://user:pw@127.0.0.1/"))
    assert "errorlist" in bad.content.decode()
    sub.refresh_from_db()
    assert sub.url == "http://127.0.0.1:9/"
    staff.post(change, _subscription_form(url="http://127.0.0.1:9/new"), follow=True)
    sub.refresh_from_db()
    assert (sub.url, sub.enabled, sub.disabled_reason) == ("http://127.0.0.1:9/new", True, "")


def test_destinations_page_shows_breakers_and_its_actions_work(staff):
    with LoopbackServer(default=Reply(200)) as receiver:
        drain(enqueue(receiver.url, execution_id="exec_ok"))
        destination = Delivery.objects.get().destination
    Destination.objects.create(
        destination="http://127.0.0.1:9", state=Destination.State.OPEN, consecutive_failures=5,
        opened_at=timezone.now(), next_probe_at=timezone.now() + timedelta(minutes=5),
    )
    page_time = timezone.now()
    page = staff.get("/admin/webhooks/destination/")
    assert page.status_code == 200
    text = page.content.decode()
    assert destination in text and "http://127.0.0.1:9" in text and "100%" in text  # last hour's success rate
    staff.post("/admin/webhooks/destination/", {"action": "probe_now", "_selected_action": ["http://127.0.0.1:9"]})
    probed = Destination.objects.get(destination="http://127.0.0.1:9")
    assert probed.state == Destination.State.OPEN and probed.next_probe_at <= timezone.now()
    response = staff.post(
        "/admin/webhooks/destination/", {"action": "close_breaker", "_selected_action": ["http://127.0.0.1:9"]},
        follow=True,
    )
    assert "Closed 1 breaker." in response.content.decode()
    closed = Destination.objects.get(destination="http://127.0.0.1:9")
    assert closed.state == Destination.State.CLOSED
    assert closed.updated_at >= probed.updated_at > page_time, "every change to a breaker says when"


def test_a_paused_destination_shows_so_and_no_destination_is_deleted_by_hand(staff):
    Destination.objects.create(destination="http://127.0.0.1:9")
    # A receiver answering 429 with Retry-After pauses it, whatever its state.
    destinations.record({"http://127.0.0.1:9": [Outcome(status=429, retry_after="120")]}, timezone.now())
    paused = Destination.objects.get()
    assert paused.paused_until > timezone.now() and "paused until" in paused.last_error
    text = staff.get("/admin/webhooks/destination/").content.decode()
    assert f"closed, paused until {timezone.localtime(paused.paused_until):%H:%M:%S}" in text
    assert "delete_selected" not in text
    page = staff.get(reverse("admin:webhooks_destination_change", args=[quote(paused.pk)]))
    assert page.status_code == 200 and "View destination" in page.content.decode()
    assert 'name="_save"' not in page.content.decode()
    assert staff.post(reverse("admin:webhooks_destination_delete", args=[quote(paused.pk)]), {"post": "yes"}).status_code == 403
    assert Destination.objects.exists()


def test_a_disabled_subscriptions_dead_letters_wait_for_it_to_be_enabled(staff):
    """Redriven while it is disabled, they died again at once, unsent, an attempt spent each."""
    with LoopbackServer(default=Reply(410)) as receiver:
        sub, _ = subscriptions.create(url=receiver.url, description="", event_types=["*"], headers={})
        with transaction.atomic():
            publish("execution.created", execution_id="exec_sub")
        row = drain(Delivery.objects.get(subscription=sub, event_type="execution.created"))
        sub.refresh_from_db()
        assert row.status == Delivery.Status.DEAD and not sub.enabled  # the 410 disabled it
        receiver.default = Reply(200)
        redriven = APIClient().post("/api/v1/webhooks/dlq/redrive", {"filter": {"subscription": sub.id}}, format="json")
        # Nothing more was made for it once it was disabled (its own dead letter's event included).
        assert list(Delivery.objects.values_list("event_type", flat=True)) == ["execution.created"]
        assert redriven.json() == {"success": True, "processed": 1, "queued": 0}
        page = staff.post("/admin/webhooks/deadletter/", {"action": "redrive_selected", "_selected_action": [row.id]},
                                 follow=True).content.decode()
        assert "Queued 0 deliveries. 1 left as it is: the subscription is disabled" in page
        row.refresh_from_db()
        assert (row.status, row.attempts) == (Delivery.Status.DEAD, 1) and len(receiver.requests) == 1
        assert not PlatformEvent.objects.filter(type="webhook.redriven").exists()
        Subscription.objects.filter(id=sub.id).update(enabled=True, disabled_reason="")
        redriven = APIClient().post("/api/v1/webhooks/dlq/redrive", {"filter": {"subscription": sub.id}}, format="json")
        assert redriven.json()["queued"] == 1
        assert drain(row).status == Delivery.Status.DELIVERED


def test_a_subscription_disabled_in_the_admin_hears_nothing_from_then_on(staff):
    sub, _ = subscriptions.create(url="http://127.0.0.1:9/", description="", event_types=["*"], headers={})
    with transaction.atomic():
        publish("execution.created", execution_id="exec_before")  # the process now holds it as enabled
    page = staff.post("/admin/webhooks/subscription/", {"action": "disable", "_selected_action": [sub.id]}, follow=True)
    assert "Disabled 1 subscription." in page.content.decode()
    with transaction.atomic():
        publish("execution.created", execution_id="exec_after")
    assert list(Delivery.objects.values_list("execution_id", flat=True)) == ["exec_before"]


def test_a_dead_letters_page_says_what_it_means(staff):
    # It showed a "next attempt at" time for a delivery that will never be tried again,
    # a bare check mark for `retries`, and its body ran off the page on one line.
    with LoopbackServer(default=Reply(410)) as receiver:
        row = drain(enqueue(receiver.url, execution_id="exec_<b>page</b>"))
    assert row.status == Delivery.Status.DEAD
    page = staff.get(reverse("admin:webhooks_deadletter_change", args=[quote(row.pk)])).content.decode()
    next_attempt = re.search(r'field-next_attempt.*?<div class="readonly">(.*?)</div>', page, re.S)
    assert next_attempt and next_attempt.group(1).strip() == "—", page
    assert "retried on the schedule (WEBHOOK_RETRY_SCHEDULE), then the dead letter queue" in page
    body = re.search(r'<pre class="webhook-body">(.*?)</pre>', page, re.S)
    assert body and "exec_&lt;b&gt;page&lt;/b&gt;" in body.group(1) and "<b>page</b>" not in page
    assert "webhooks/admin.css" in page


def test_a_subscription_the_api_took_can_be_saved_in_the_admin(staff, settings):
    """The model's URLField refused what `clean_url` takes (a trailing dot, an underscore): the
    operator could not change its description, event types or switch it off in the admin."""
    settings.WEBHOOK_ALLOWED_HOSTS = ["localhost", "127.0.0.1"]
    created = APIClient().post("/api/v1/webhooks/subscriptions", {
        "url": "http://localhost.:18474/x", "event_types": ["*"]}, format="json")
    assert created.status_code == 201, created.content
    sub = Subscription.objects.get()
    page = staff.post(reverse("admin:webhooks_subscription_change", args=[quote(sub.id)]),
                      _subscription_form(url=sub.url, description="renamed", enabled=""))
    assert page.status_code == 302, page.content.decode()[:3000]
    sub.refresh_from_db()
    assert (sub.description, sub.enabled) == ("renamed", False)
