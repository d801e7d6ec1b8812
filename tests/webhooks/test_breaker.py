"""Per-destination circuit breakers, in-flight caps and fair claims: one dead receiver delays no one else."""

import time
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from agentfield_site.lib.outbound import destination_of, encode_body
from devtools.loopback import Blackhole, LoopbackServer, Reply
from devtools.processes import free_port
from devtools.waiting import wait_for
from observability.models import PlatformEvent
from tests.webhooks.conftest import completion_payload, enqueue, sender_thread
from webhooks import delivery, destinations
from webhooks.models import Attempt, Delivery, Destination

pytestmark = pytest.mark.django_db

FAILURES = 3


@pytest.fixture
def breaker(webhook_settings):
    webhook_settings.WEBHOOK_BREAKER_FAILURES = FAILURES
    webhook_settings.WEBHOOK_RETRY_SCHEDULE = [0.05] * 8
    return webhook_settings


def events(event_type: str) -> list[PlatformEvent]:
    return list(PlatformEvent.objects.filter(type=event_type))


def run_until_quiet(seconds: float = 3.0, until=None) -> None:
    """Run the engine as workers would, retries included, for a while (or until `until()` holds)."""
    deadline = time.monotonic() + (seconds if until is None else 15.0)
    while time.monotonic() < deadline:
        delivery.send_due(run_seconds=0.5)
        if until is not None and until():
            return
        time.sleep(0.05)
    assert until is None, "the engine never got there"


def is_open() -> bool:
    return Destination.objects.filter(state=Destination.State.OPEN).exists()


def make_rows(url: str, n: int, prefix: str) -> None:
    Delivery.objects.bulk_create(
        Delivery(
            kind=Delivery.Kind.COMPLETION, event_type="execution.completed", execution_id=f"{prefix}_{i}",
            url=url, destination=destination_of(url), body=encode_body(completion_payload(f"{prefix}_{i}")),
        )
        for i in range(n)
    )


def test_opens_after_n_failures_and_defers_without_spending_attempts(breaker):
    with LoopbackServer(default=Reply(503)) as receiver:
        rows = [enqueue(receiver.url, execution_id=f"exec_{i}") for i in range(2)]
        run_until_quiet(until=is_open)
        dest = Destination.objects.get(destination=rows[0].destination)
        # Both deliveries may be in flight when the breaker opens: at most one more attempt each.
        spent = Attempt.objects.count()
        assert dest.state == Destination.State.OPEN and FAILURES <= dest.consecutive_failures == spent < FAILURES + 2
        assert dest.next_probe_at > timezone.now() + timedelta(seconds=20)
        assert len(receiver.requests) == spent
        assert Delivery.objects.filter(status=Delivery.Status.PENDING).count() == 2  # waiting, not dead
        [opened] = events("webhook.destination_opened")
        assert opened.data["destination"] == rows[0].destination and opened.status == "open"
        run_until_quiet(1.0)  # retries are due, but the breaker holds them
        assert len(receiver.requests) == spent == Attempt.objects.count()


def test_probe_closes_it_and_the_rest_follow(breaker):
    with LoopbackServer(default=Reply(503)) as receiver:
        for i in range(4):
            enqueue(receiver.url, execution_id=f"exec_{i}")
        run_until_quiet(until=is_open)
        sent_before = len(receiver.requests)
        receiver.default = Reply(200, delay=0.3)
        assert destinations.probe_now(Destination.objects.values_list("destination", flat=True)) == 1
        run_until_quiet(until=lambda: Delivery.objects.filter(status=Delivery.Status.DELIVERED).count() == 4)
        later = receiver.requests[sent_before:]
    assert len(later) == 4 and Delivery.objects.filter(status=Delivery.Status.DELIVERED).count() == 4
    # One probe alone first, then the others once it succeeded.
    assert all(r.at >= later[0].at + 0.25 for r in later[1:])
    assert Destination.objects.get().state == Destination.State.CLOSED
    assert len(events("webhook.destination_closed")) == 1


def test_failed_probe_reopens_for_twice_the_cooldown(breaker):
    with LoopbackServer(default=Reply(503)) as receiver:
        enqueue(receiver.url)
        run_until_quiet(until=is_open)
        first = Destination.objects.get()
        destinations.probe_now([first.destination])
        sent = len(receiver.requests)
        run_until_quiet(until=lambda: Destination.objects.get().next_probe_at > first.next_probe_at)
        run_until_quiet(0.3)
        assert len(receiver.requests) == sent + 1  # exactly one probe
    again = Destination.objects.get()
    assert again.state == Destination.State.OPEN and again.cooldown_seconds == 2 * first.cooldown_seconds
    assert len(events("webhook.destination_opened")) == 2


def test_a_refused_connection_counts_and_a_4xx_does_not(breaker):
    dead = f"http://127.0.0.1:{free_port()}/hook"
    enqueue(dead, execution_id="exec_dead")
    with LoopbackServer(default=Reply(404)) as misdeployed:
        enqueue(misdeployed.url, execution_id="exec_404")
        run_until_quiet(until=lambda: Delivery.objects.filter(status=Delivery.Status.DEAD).count() == 1 and is_open())
        assert len(misdeployed.requests) == 9  # the whole schedule: the receiver is up
    assert Destination.objects.get(destination=destination_of(dead)).state == Destination.State.OPEN
    assert Destination.objects.get(destination=destination_of(misdeployed.url)).state == Destination.State.CLOSED


def test_deferred_delivery_dead_letters_after_its_schedules_span(breaker):
    with LoopbackServer(default=Reply(503)) as receiver:
        row = enqueue(receiver.url)
        run_until_quiet(until=is_open)
    dest = Destination.objects.get()
    assert dest.state == Destination.State.OPEN
    row.refresh_from_db()
    assert row.status == Delivery.Status.PENDING
    # Its span ended before the destination last failed, and its next retry is due.
    Delivery.objects.filter(id=row.id).update(budget_started_at=dest.failed_at - timedelta(seconds=1),
                                              next_attempt_at=timezone.now())
    delivery.tick()
    row.refresh_from_db()
    assert row.status == Delivery.Status.DEAD and row.attempts == FAILURES == row.attempt_log.count()
    assert "unavailable since" in row.last_error and dest.opened_at.isoformat()[:19] in row.last_error
    assert "last failed" in row.last_error
    [dead] = events("webhook.dead_lettered")
    assert dead.data["delivery_id"] == row.id


def test_a_receiver_back_before_the_next_probe_gets_what_waited_past_its_span(breaker):
    # Dead-lettered at the span's end, unsent, while the breaker waited for its next
    # probe: the receiver, back by then, never saw them.
    with LoopbackServer(default=Reply(503)) as receiver:
        row = enqueue(receiver.url)
        run_until_quiet(until=is_open)
        dest = Destination.objects.get()
        # Its span (0.4 s) ends 0.2 s after the breaker's last failure, long before the next probe.
        Delivery.objects.filter(id=row.id).update(budget_started_at=dest.failed_at - timedelta(seconds=0.2),
                                                  next_attempt_at=timezone.now())
        receiver.default.status = 200
        wait_for(lambda: timezone.now() > dest.failed_at + timedelta(seconds=0.3), timeout=5, what="the span's end")
        delivery.tick()
        row.refresh_from_db()
        assert row.status == Delivery.Status.PENDING, row.last_error
        destinations.probe_now([dest.destination])
        run_until_quiet(until=lambda: Delivery.objects.get(id=row.id).status == Delivery.Status.DELIVERED)
    assert not events("webhook.dead_lettered")
    assert Destination.objects.get().state == Destination.State.CLOSED


def test_429_with_retry_after_pauses_the_destination(breaker):
    with LoopbackServer(Reply(429, {"Retry-After": "30"}), default=Reply(200)) as receiver:
        enqueue(receiver.url, execution_id="exec_a")
        enqueue(receiver.url, execution_id="exec_b")
        delivery.send_due(run_seconds=0.3)
        dest = Destination.objects.get()
        assert dest.paused_until > timezone.now() + timedelta(seconds=20)
        sent = len(receiver.requests)
        run_until_quiet(0.5)
        assert len(receiver.requests) == sent  # paused: nothing goes out
        destinations.close([dest.destination])
        run_until_quiet(until=lambda: Delivery.objects.filter(status=Delivery.Status.DELIVERED).count() == 2)
    assert Delivery.objects.filter(status=Delivery.Status.DELIVERED).count() == 2


def test_claims_are_fair_and_capped_per_destination(webhook_settings):
    webhook_settings.WEBHOOK_MAX_IN_FLIGHT_PER_DESTINATION = 32
    make_rows("http://127.0.0.1:9/blackhole", 5000, "bh")
    healthy = enqueue("http://127.0.0.1:10/healthy", execution_id="exec_healthy")
    token, rows = delivery.claim(200)
    by_destination = {}
    for row in rows:
        by_destination.setdefault(row.destination, []).append(row.id)
    assert healthy.id in by_destination["http://127.0.0.1:10"]
    assert len(by_destination["http://127.0.0.1:9"]) == 32
    # The 32 in flight fill the blackhole's cap for every other claim too.
    assert delivery.claim(200)[1] == []
    delivery.release([token])
    assert Delivery.objects.filter(status=Delivery.Status.IN_FLIGHT).count() == 0


def test_a_claim_looks_past_full_destinations_only_when_another_has_rows_queued():
    # Rows queued for three destinations; the ranges between full ones are what is read.
    for port in (7, 8, 9):
        enqueue(f"http://127.0.0.1:{port}/", execution_id=f"exec_{port}")
    a, b, c = "http://127.0.0.1:7", "http://127.0.0.1:8", "http://127.0.0.1:9"
    assert delivery._others_queued({a, c})  # b, between them
    assert delivery._others_queued({b})  # a below, c above
    assert delivery._others_queued({a, b})  # c above
    assert not delivery._others_queued({a, b, c})
    Delivery.objects.filter(destination=b).update(status=Delivery.Status.DELIVERED)
    assert not delivery._others_queued({a, c})


def test_open_destinations_are_skipped_by_claims(webhook_settings):
    make_rows("http://127.0.0.1:9/down", 50, "down")
    Destination.objects.create(
        destination="http://127.0.0.1:9", state=Destination.State.OPEN, next_probe_at=timezone.now() + timedelta(minutes=1)
    )
    healthy = enqueue("http://127.0.0.1:10/up", execution_id="exec_up")
    assert [r.id for r in delivery.claim(100)[1]] == [healthy.id]
    # Once the probe is due, exactly one delivery goes as the probe, and the breaker is half-open.
    Destination.objects.update(next_probe_at=timezone.now())
    [probe] = delivery.claim(100)[1]
    assert probe.destination == "http://127.0.0.1:9"
    assert Destination.objects.get().state == Destination.State.HALF_OPEN
    assert delivery.claim(100)[1] == []


@pytest.mark.django_db(transaction=True)
def test_healthy_delivery_not_delayed_by_a_blackhole(breaker):
    breaker.WEBHOOK_TIMEOUT = 5.0
    with Blackhole() as hole, LoopbackServer() as healthy:
        make_rows(hole.url, 300, "bh")
        sender = sender_thread(run_seconds=3.0)
        sender.start()
        try:
            wait_for(lambda: hole.connections, timeout=5, what="the blackhole's requests to hang")
            start = time.time()
            enqueue(healthy.url, execution_id="exec_healthy")
            wait_for(lambda: healthy.requests, timeout=5, interval=0.01, what="the healthy delivery")
            assert healthy.requests[0].at - start < 1.0
        finally:
            sender.join()
        assert hole.connections <= breaker.WEBHOOK_MAX_IN_FLIGHT_PER_DESTINATION


@pytest.mark.django_db(transaction=True)
def test_no_duplicate_from_a_lapsed_lease_while_a_slow_send_is_alive(webhook_settings):
    webhook_settings.WEBHOOK_LEASE_SECONDS = 0.6
    webhook_settings.WEBHOOK_TIMEOUT = 5.0
    with LoopbackServer(Reply(200, delay=2.5)) as receiver:
        row = enqueue(receiver.url)
        first = sender_thread()
        first.start()
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:  # a second worker and the sweeper, busy meanwhile
            delivery.reclaim_expired()
            delivery.send_due(run_seconds=0.1)
            time.sleep(0.05)
        first.join()
    row.refresh_from_db()
    assert row.status == Delivery.Status.DELIVERED and row.attempts == 1
    assert len(receiver.requests) == 1


def test_destinations_api_lists_breakers_and_queues(breaker):
    with LoopbackServer(default=Reply(503)) as receiver:
        enqueue(receiver.url)
        run_until_quiet(until=is_open)
    enqueue("http://127.0.0.1:10/other", execution_id="exec_other")
    response = APIClient().get("/api/v1/webhooks/destinations")
    assert response.status_code == 200
    rows = {r["destination"]: r for r in response.json()["results"]}
    down = rows[destination_of(receiver.url)]
    assert down["state"] == "open" and down["consecutive_failures"] == FAILURES
    assert down["pending"] == 1 and down["in_flight"] == 0 and down["success_rate_1h"] == 0.0
    assert down["next_probe_at"] and down["opened_at"]
    waiting = rows["http://127.0.0.1:10"]
    assert waiting["state"] == "closed" and waiting["pending"] == 1 and waiting["success_rate_1h"] is None
