"""Results are written on a thread of their own while the sender claims; a failed write hands its rows back."""

import threading

import pytest
from django.db import OperationalError

from devtools.loopback import LoopbackServer
from tests.webhooks.conftest import enqueue
from webhooks import delivery
from webhooks.models import Attempt, Delivery

pytestmark = pytest.mark.django_db(transaction=True)


def test_results_are_written_off_the_claiming_thread(monkeypatch):
    writers: set[str] = set()
    real_record = delivery.record

    def record(results, before_commit=None):
        writers.add(threading.current_thread().name)
        real_record(results, before_commit)

    monkeypatch.setattr(delivery, "record", record)
    with LoopbackServer() as receiver:
        rows = [enqueue(receiver.url, execution_id=f"exec_{i}") for i in range(40)]
        assert delivery.send_due() == 40
        assert len(receiver.requests) == 40
    assert writers == {"webhook-recorder"}
    assert Delivery.objects.filter(id__in=[r.id for r in rows], status=Delivery.Status.DELIVERED).count() == 40
    assert Attempt.objects.count() == 40


def test_a_failed_write_hands_the_rows_back_to_be_sent_again(monkeypatch):
    real_record = delivery.record
    failures = []

    def record(results, before_commit=None):
        if not failures:
            failures.append(len(results))
            raise OperationalError("the database went away")
        real_record(results, before_commit)

    monkeypatch.setattr(delivery, "record", record)
    with LoopbackServer() as receiver:
        rows = [enqueue(receiver.url, execution_id=f"exec_{i}") for i in range(5)]
        with pytest.raises(OperationalError):
            delivery.send_due()
        # Sent, but nothing written: due again under the same webhook-id, no attempt spent.
        assert failures and Attempt.objects.count() == 0
        assert not Delivery.objects.exclude(status=Delivery.Status.PENDING).exists()
        assert set(Delivery.objects.values_list("attempts", "lease_token")) == {(0, "")}
        assert delivery.send_due() == 5
        received = [r.headers["webhook-id"] for r in receiver.requests]
    # Every row went out twice at most, always under its own webhook-id.
    assert set(received) == {r.webhook_id for r in rows} and 5 + failures[0] <= len(received) <= 10
    assert Delivery.objects.filter(status=Delivery.Status.DELIVERED).count() == 5
    assert Attempt.objects.count() == 5
