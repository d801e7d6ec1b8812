"""The engine against real receivers: outcomes, schedule, attempts log, events."""

import json
import time

import pytest
from standardwebhooks import Webhook

from agentfield_site.lib import signing
from devtools.loopback import LoopbackServer, Reply
from observability.models import PlatformEvent
from tests.webhooks.conftest import SCHEDULE, drain, enqueue
from webhooks import delivery
from webhooks.models import Attempt, Delivery

pytestmark = pytest.mark.django_db
SECRET = signing.generate_secret()


def events(kind: str) -> list[PlatformEvent]:
    return list(PlatformEvent.objects.filter(type=kind))


def test_delivered_at_once_signed_and_verified():
    with LoopbackServer() as receiver:
        row = drain(enqueue(receiver.url, SECRET, headers={"X-Tenant": "acme"}))
    assert row.status == Delivery.Status.DELIVERED and row.attempts == 1 and row.last_status == 200
    [req] = receiver.requests
    assert req.body == bytes(row.body)
    payload = Webhook(SECRET).verify(req.body, req.headers)
    assert payload["execution_id"] == "exec_1" and payload["result"]["text"] == "naïve café ✓"
    signing.verify(req.body, req.headers, SECRET)
    signing.verify(req.body, {"X-AgentField-Signature": req.headers["X-AgentField-Signature"]}, SECRET,
                   allow_unstamped=True)
    assert req.headers["webhook-id"] == row.webhook_id
    assert req.headers["Content-Type"] == "application/json"
    assert req.headers["User-Agent"].startswith("AgentField-Webhooks/")
    assert req.headers["X-Tenant"] == "acme"
    [attempt] = row.attempt_log.all()
    assert attempt.status_code == 200 and attempt.outcome == Attempt.Outcome.DELIVERED and attempt.response_body == "ok"
    assert "Content-Length" in attempt.response_headers
    [event] = events("webhook.delivered")
    assert event.execution_id == "exec_1" and event.data["webhook_id"] == row.webhook_id


def test_no_secret_sends_id_and_timestamp_only():
    with LoopbackServer() as receiver:
        drain(enqueue(receiver.url))
    headers = receiver.requests[0].headers
    assert headers["webhook-id"] and headers["webhook-timestamp"]
    assert "webhook-signature" not in headers and "X-AgentField-Signature" not in headers


def test_500_then_200_on_schedule_resigned_each_attempt():
    with LoopbackServer(Reply(500, body=b"boom")) as receiver:
        row = drain(enqueue(receiver.url, SECRET))
    assert row.status == Delivery.Status.DELIVERED and row.attempts == 2
    first, second = receiver.requests
    gap = second.at - first.at
    assert SCHEDULE[0] * 0.8 - 0.05 <= gap <= SCHEDULE[0] * 1.2 + 1.0
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert first.body == second.body
    for req in (first, second):
        Webhook(SECRET).verify(req.body, req.headers)
    attempts = list(row.attempt_log.all())
    assert [a.status_code for a in attempts] == [500, 200]
    assert attempts[0].outcome == Attempt.Outcome.RETRY and attempts[0].response_body == "boom"
    assert attempts[0].error == "HTTP 500"
    assert len(events("webhook.failed")) == 1 and len(events("webhook.delivered")) == 1


def test_always_500_dead_after_1_plus_n_then_redrive_delivers_same_id():
    with LoopbackServer(default=Reply(500)) as receiver:
        row = drain(enqueue(receiver.url, SECRET))
        assert row.status == Delivery.Status.DEAD and row.dead_lettered_at is not None
        assert row.attempts == 1 + len(SCHEDULE) == len(receiver.requests)
        assert len(events("webhook.failed")) == 1 and len(events("webhook.dead_lettered")) == 1
        receiver.default = Reply(200)
        assert delivery.redrive(Delivery.objects.filter(id=row.id)) == 1
        row = drain(row)
    assert row.status == Delivery.Status.DELIVERED and row.attempts == len(SCHEDULE) + 2
    assert {r.headers["webhook-id"] for r in receiver.requests} == {row.webhook_id}
    assert len(events("webhook.redriven")) == 1 and len(events("webhook.delivered")) == 1


def test_redrive_gives_a_fresh_budget():
    with LoopbackServer(default=Reply(503)) as receiver:
        row = drain(enqueue(receiver.url))
        delivery.redrive(Delivery.objects.filter(id=row.id))
        row = drain(row)
    assert row.status == Delivery.Status.DEAD and row.attempts == 2 * (1 + len(SCHEDULE))


def test_410_dead_at_once():
    with LoopbackServer(default=Reply(410)) as receiver:
        row = drain(enqueue(receiver.url))
    assert row.status == Delivery.Status.DEAD and row.attempts == 1 and len(receiver.requests) == 1
    assert row.last_status == 410 and row.attempt_log.get().outcome == Attempt.Outcome.DEAD


def test_receiver_slower_than_timeout(webhook_settings):
    webhook_settings.WEBHOOK_TIMEOUT = 0.3
    seen: list[str] = []

    def slow_the_first_time(received) -> None:
        # Keyed on this delivery's webhook-id, not on the order of arrival: a stray
        # request (an earlier test's, to a port this server has since taken) cannot
        # take the slow answer from it.
        if received.headers.get("webhook-id") == row.webhook_id:
            seen.append(row.webhook_id)
            if len(seen) == 1:
                time.sleep(3.0)

    with LoopbackServer(on_request=slow_the_first_time) as receiver:
        row = enqueue(receiver.url)
        row = drain(row)
    assert row.status == Delivery.Status.DELIVERED and row.attempts == 2, [r.headers.get("webhook-id") for r in receiver.requests]
    slow = row.attempt_log.first()
    assert slow.status_code is None and "timeout" in slow.error and slow.outcome == Attempt.Outcome.RETRY
    assert 250 <= slow.duration_ms < 2500  # gave up long before the receiver answered


def test_retry_after_is_honoured_within_twice_the_schedule():
    with LoopbackServer(Reply(429, {"Retry-After": "0.35"}), Reply(503, {"Retry-After": "100"})) as receiver:
        row = drain(enqueue(receiver.url))
    assert row.status == Delivery.Status.DELIVERED
    first, second, third = (r.at for r in receiver.requests)
    assert 0.3 <= second - first <= 0.4 + 1.0  # 0.35 asked, under 2 x 0.2
    assert 0.6 <= third - second <= 0.8 + 1.0  # 100 asked, clamped to 2 x 0.4


def test_retry_after_never_brings_a_retry_forward(webhook_settings):
    webhook_settings.WEBHOOK_RETRY_SCHEDULE = [1.0, 1.0]
    with LoopbackServer(Reply(429, {"Retry-After": "0"}), Reply(503, {"Retry-After": "0.01"})) as receiver:
        row = drain(enqueue(receiver.url))
    assert row.status == Delivery.Status.DELIVERED and row.attempts == 3
    first, second, third = (r.at for r in receiver.requests)
    assert second - first >= 0.8 - 0.05 and third - second >= 0.8 - 0.05  # the schedule, not the 0 s asked


def test_302_recorded_not_followed():
    with LoopbackServer(Reply(302, {"Location": "http://169.254.169.254/"}, b"moved"), Reply(200)) as receiver:
        row = drain(enqueue(receiver.url))
    redirect = row.attempt_log.first()
    assert redirect.status_code == 302 and redirect.outcome == Attempt.Outcome.RETRY
    assert redirect.response_headers["Location"] == "http://169.254.169.254/"
    assert "not followed" in redirect.error
    assert [r.path for r in receiver.requests] == ["/hook", "/hook"]


def test_large_response_body_truncated(webhook_settings):
    webhook_settings.WEBHOOK_RESPONSE_BODY_LIMIT = 100
    with LoopbackServer(Reply(200, body=json.dumps({"x": "y" * 1000}).encode())) as receiver:
        row = drain(enqueue(receiver.url))
    assert len(row.attempt_log.get().response_body) == 100


def test_a_nul_in_the_receivers_answer_is_recorded_not_a_wedge():
    """PostgreSQL refuses NUL in text: kept as sent, the attempt could never be written,
    and the delivery (with every other one recorded beside it) would be sent again and again."""
    with LoopbackServer(Reply(500, body=b"bad\x00body"), default=Reply(200, body=b"ok\x00")) as receiver:
        row = drain(enqueue(receiver.url))
    assert row.status == Delivery.Status.DELIVERED and row.attempts == 2
    assert [a.response_body for a in row.attempt_log.all()] == ["bad\ufffdbody", "ok\ufffd"]
    assert len(receiver.requests) == 2


def test_many_deliveries_one_flush(webhook_settings):
    with LoopbackServer() as receiver:
        rows = [enqueue(receiver.url, SECRET, execution_id=f"exec_{i}") for i in range(60)]
        assert delivery.send_due() == 60
    assert Delivery.objects.filter(status=Delivery.Status.DELIVERED).count() == 60
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 60
    assert Attempt.objects.count() == 60 == len(events("webhook.delivered"))
    assert rows

