"""Claims are exclusive; a lapsed lease makes a delivery due again; a stale sender cannot overwrite."""

from datetime import timedelta

import pytest
from django.utils import timezone

from agentfield_site.jobs import sweeper
from devtools.loopback import LoopbackServer
from observability.models import PlatformEvent
from tests.webhooks.conftest import enqueue, send_now
from webhooks import delivery
from webhooks.models import Delivery

pytestmark = pytest.mark.django_db


def test_claim_is_exclusive_and_bounded():
    for i in range(5):
        enqueue("http://127.0.0.1:9/", execution_id=f"exec_{i}")
    token_a, first = delivery.claim(3)
    token_b, second = delivery.claim(3)
    assert len(first) == 3 and len(second) == 2 and token_a != token_b
    assert not {r.id for r in first} & {r.id for r in second}
    assert delivery.claim(3)[1] == []
    assert all(r.status == Delivery.Status.IN_FLIGHT and r.lease_until for r in first)


def test_a_row_whose_request_ended_frees_its_place_under_its_own_lease_only(settings):
    """A sender's ended requests (results not written yet) free their places: named by id and lease token."""
    settings.WEBHOOK_MAX_IN_FLIGHT_PER_DESTINATION = 2
    for i in range(5):
        enqueue("http://127.0.0.1:9/", execution_id=f"exec_{i}")
    token, (a, b) = delivery.claim(5)
    assert delivery.claim(5)[1] == []  # the cap: two on the wire, three rows due
    # a's request ended: its place is free for one more, and only one. (A long list of
    # names is one parameter, or two on PostgreSQL: no parameter limit applies.)
    others = [(10**9 + i, token) for i in range(1500)]
    _, [c] = delivery.claim(5, lambda: [*others, (a.id, token)])
    assert delivery.claim(5, lambda: [(a.id, token)])[1] == []
    # Another lease's token names nothing: b is still on the wire.
    assert delivery.claim(5, lambda: [(a.id, token), (b.id, "another-lease")])[1] == []
    # Handed back and claimed again under a new lease, a row is on the wire again, whatever its old name says.
    delivery.release([token])
    Delivery.objects.filter(id__in=[a.id, b.id]).update(next_attempt_at=timezone.now() - timedelta(hours=1))
    _, [again] = delivery.claim(5)
    assert again.id in {a.id, b.id} and again.lease_token != token
    assert delivery.claim(5, lambda: [(a.id, token), (b.id, token)])[1] == []
    assert Delivery.objects.filter(status=Delivery.Status.IN_FLIGHT).count() == 2
    assert Delivery.objects.filter(status=Delivery.Status.PENDING).count() == 3


def test_lapsed_lease_reclaimed_by_the_sweeper_tick_and_stale_result_ignored():
    with LoopbackServer() as receiver:
        row = enqueue(receiver.url)
        stale_token, [claimed] = delivery.claim(10)
        Delivery.objects.filter(id=row.id).update(lease_until=timezone.now() - timedelta(seconds=1))
        sweeper.tick_once()  # the webhooks tick is registered by WebhooksConfig.ready
        row.refresh_from_db()
        assert row.status == Delivery.Status.PENDING and row.lease_token == ""
        assert delivery.send_due() == 1
        # The first sender wakes up late: its result is logged but cannot overwrite.
        delivery.record(send_now(stale_token, [claimed]))
    row.refresh_from_db()
    assert row.status == Delivery.Status.DELIVERED and row.attempts == 1
    assert row.attempt_log.count() == 2
    assert PlatformEvent.objects.filter(type="webhook.delivered").count() == 1
    assert {r.headers["webhook-id"] for r in receiver.requests} == {row.webhook_id}
