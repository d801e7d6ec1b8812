"""Results are written on a thread of their own while the sender claims and renews; a failed write hands its rows back."""

import threading
import time

import pytest
from django.db import OperationalError, connection, transaction

from devtools.loopback import LoopbackServer
from tests.webhooks.conftest import enqueue, held_in_transaction
from webhooks import delivery
from webhooks.models import Attempt, Delivery

pytestmark = pytest.mark.django_db(transaction=True)


def test_results_are_written_off_the_claiming_thread(monkeypatch):
    writers: set[str] = set()
    real_record = delivery.record

    def record(results):
        writers.add(threading.current_thread().name)
        real_record(results)

    monkeypatch.setattr(delivery, "record", record)
    with LoopbackServer() as receiver:
        rows = [enqueue(receiver.url, execution_id=f"exec_{i}") for i in range(40)]
        assert delivery.send_due() == 40
        assert len(receiver.requests) == 40
    assert writers == {"webhook-recorder"}
    assert Delivery.objects.filter(id__in=[r.id for r in rows], status=Delivery.Status.DELIVERED).count() == 40
    assert Attempt.objects.count() == 40


def test_the_sender_waits_for_slow_writes_without_spinning_or_claiming_past_them(monkeypatch, settings):
    settings.WEBHOOK_CONCURRENCY = 4
    real_record = delivery.record
    unwritten = []

    def slow_record(results):
        unwritten.append(Delivery.objects.filter(status=Delivery.Status.IN_FLIGHT).count())
        time.sleep(0.2)  # a database that writes slowly
        real_record(results)

    monkeypatch.setattr(delivery, "record", slow_record)
    with LoopbackServer() as receiver:
        for i in range(24):
            enqueue(receiver.url, execution_id=f"exec_{i}")
        wall, cpu = time.monotonic(), time.process_time()
        assert delivery.send_due() == 24
        wall, cpu = time.monotonic() - wall, time.process_time() - cpu
    assert Delivery.objects.filter(status=Delivery.Status.DELIVERED).count() == 24
    # Claimed and not written: at most a full pipe on the wire and a full pipe waiting to be written, and one claim.
    assert max(unwritten) <= 3 * settings.WEBHOOK_CONCURRENCY
    assert cpu < wall / 2, f"the sender spun while the writes lagged: {cpu:.2f}s of CPU in {wall:.2f}s"


def test_a_failed_write_hands_the_rows_back_to_be_sent_again(monkeypatch):
    real_record = delivery.record
    failures = []

    def record(results):
        if not failures:
            failures.append(len(results))
            raise OperationalError("the database went away")
        real_record(results)

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


@pytest.mark.skipif("connection.vendor != 'postgresql'")  # SQLite has no row locks: one writer at a time
def test_renewing_leases_leaves_the_rows_being_written_alone():
    """A claim's token also covers rows whose results the recorder is writing, on its own connection."""
    for i in range(2):
        enqueue("http://127.0.0.1:9/", execution_id=f"exec_{i}")
    token, rows = delivery.claim(2)
    on_wire, answered = sorted(rows, key=lambda r: r.id)

    def recorder() -> None:  # holds the answered row, as a write of results does until its commit
        Delivery.objects.filter(id=answered.id).update(last_error="being written")

    with held_in_transaction(recorder):
        before = dict(Delivery.objects.filter(id__in=[on_wire.id, answered.id]).values_list("id", "lease_until"))
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET LOCAL lock_timeout = '2s'")  # a wait on the recorder's row fails, not hangs
            delivery.renew(delivery._jobs(token, [on_wire]))
    assert Delivery.objects.get(id=on_wire.id).lease_until > before[on_wire.id]
    assert Delivery.objects.get(id=answered.id).lease_until == before[answered.id]
