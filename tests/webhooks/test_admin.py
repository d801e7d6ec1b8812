"""The admin as an operations console: deliveries with attempts, the DLQ, redrive, masked secrets."""

from datetime import timedelta

import pytest
from django.contrib.admin.utils import quote
from django.contrib.auth.models import User
from django.urls import reverse
from django.utils import timezone

from tests.webhooks.conftest import drain, enqueue
from tests.webhooks.receiver import Receiver, Reply
from webhooks import subscriptions
from webhooks.models import Delivery, Destination

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(client):
    user = User.objects.create_superuser("alice", "alice@example.com", "pw")
    client.force_login(user)
    return client


def test_delivery_pages_search_and_redrive_action(staff):
    with Receiver(default=Reply(410, body=b"gone")) as receiver:
        row = drain(enqueue(receiver.url, execution_id="exec_admin"))
        listing = staff.get("/admin/webhooks/delivery/", {"q": "exec_admin"})
        assert listing.status_code == 200 and row.webhook_id in listing.content.decode()
        by_destination = staff.get("/admin/webhooks/delivery/", {"status": "dead", "q": row.destination})
        assert by_destination.status_code == 200 and row.webhook_id in by_destination.content.decode()
        detail = staff.get(f"/admin/webhooks/delivery/{row.id}/change/")
        assert detail.status_code == 200 and "gone" in detail.content.decode()  # the attempt, inline
        dlq = staff.get("/admin/webhooks/deadletter/")
        assert dlq.status_code == 200 and row.webhook_id in dlq.content.decode()
        receiver.default = Reply(200)
        response = staff.post(
            "/admin/webhooks/deadletter/", {"action": "redrive_selected", "_selected_action": [row.id]}, follow=True
        )
        assert "Queued 1 deliveries" in response.content.decode()
        assert drain(row).status == Delivery.DELIVERED
    assert staff.get("/admin/webhooks/deadletter/").content.decode().count(row.webhook_id) == 0


def test_subscription_admin_masks_the_secret(staff):
    sub, secret = subscriptions.create(url="http://127.0.0.1:9/", event_types=["*"], headers={})
    # Quoted as the admin's own links are: an id like "sub_22…" is otherwise read as an escape.
    response = staff.get(reverse("admin:webhooks_subscription_change", args=[quote(sub.id)]))
    assert response.status_code == 200
    page = response.content.decode()
    assert secret not in page and secret[-4:] in page


def test_destinations_page_shows_breakers_and_its_actions_work(staff):
    with Receiver(default=Reply(200)) as receiver:
        drain(enqueue(receiver.url, execution_id="exec_ok"))
        destination = Delivery.objects.get().destination
    Destination.objects.create(
        destination="http://127.0.0.1:9", state=Destination.OPEN, consecutive_failures=5,
        opened_at=timezone.now(), next_probe_at=timezone.now() + timedelta(minutes=5),
    )
    page = staff.get("/admin/webhooks/destination/")
    assert page.status_code == 200
    text = page.content.decode()
    assert destination in text and "http://127.0.0.1:9" in text and "100%" in text  # last hour's success rate
    staff.post("/admin/webhooks/destination/", {"action": "probe_now", "_selected_action": ["http://127.0.0.1:9"]})
    probed = Destination.objects.get(destination="http://127.0.0.1:9")
    assert probed.state == Destination.OPEN and probed.next_probe_at <= timezone.now()
    response = staff.post(
        "/admin/webhooks/destination/", {"action": "close_breaker", "_selected_action": ["http://127.0.0.1:9"]},
        follow=True,
    )
    assert "Closed 1 breakers" in response.content.decode()
    assert Destination.objects.get(destination="http://127.0.0.1:9").state == Destination.CLOSED
