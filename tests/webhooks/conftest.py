"""Webhook test fixtures: loopback allowed, short retry schedule, a drain helper."""

import contextlib
import threading
from collections.abc import Callable, Iterator
from queue import SimpleQueue

import pytest
from django.db import connection, transaction

from devtools.waiting import wait_for
from webhooks import delivery
from webhooks.completion import enqueue_completion
from webhooks.models import Delivery

SCHEDULE = [0.2, 0.4, 0.6]


@pytest.fixture(autouse=True)
def webhook_settings(settings):
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    settings.WEBHOOK_RETRY_SCHEDULE = SCHEDULE
    settings.WEBHOOK_TIMEOUT = 2.0
    settings.WEBHOOK_LEASE_SECONDS = 5.0
    # Breaker behaviour has its own tests (test_breaker.py); elsewhere a failing
    # receiver must see every attempt of its schedule.
    settings.WEBHOOK_BREAKER_FAILURES = 1000
    return settings


def completion_payload(execution_id: str, status: str = "succeeded") -> dict:
    return {
        "event": "execution.completed" if status == "succeeded" else "execution.failed",
        "execution_id": execution_id,
        "workflow_id": "run_1",
        "run_id": "run_1",
        "status": status,
        "target": "analyzer.process",
        "type": "reasoner",
        "result": {"text": "naïve café ✓"} if status == "succeeded" else None,
        "timestamp": "2026-03-23T10:00:00Z",
    }


def enqueue(url: str, secret: str = "", execution_id: str = "exec_1", headers: dict | None = None) -> Delivery:
    enqueue_completion(
        execution_id=execution_id, url=url, secret=secret, headers=headers or {}, payload=completion_payload(execution_id)
    )
    return Delivery.objects.get(execution_id=execution_id, kind=Delivery.Kind.COMPLETION)


def drain(row: Delivery, timeout: float = 10.0) -> Delivery:
    """Run the engine (as a worker would) until the delivery is no longer pending."""

    def sent() -> Delivery | None:
        delivery.send_due()
        row.refresh_from_db()
        return row if row.status not in (Delivery.Status.PENDING, Delivery.Status.IN_FLIGHT) else None

    return wait_for(sent, timeout=timeout, interval=0.02, what=f"delivery {row.id} to leave the queue")


def sender_thread(**kwargs) -> threading.Thread:
    """`send_due` on a thread of its own, as another worker runs it; its connection is closed when it ends.

    (A thread's connection outlives the thread otherwise, and PostgreSQL will not
    drop a test database that a session still uses.)
    """

    def run() -> None:
        try:
            delivery.send_due(**kwargs)
        finally:
            connection.close()

    return threading.Thread(target=run)


@contextlib.contextmanager
def held_in_transaction(write: Callable[[], None], seconds: float = 10) -> Iterator[threading.Event]:
    """`write()` in a transaction on a thread (and connection) of its own, not committed until released.

    As another worker's transaction stands while this one runs: the block runs once
    `write()` is done; setting the event it gets commits it (leaving the block does too).
    """
    written, release = threading.Event(), threading.Event()

    def run() -> None:
        try:
            with transaction.atomic():
                write()
                written.set()
                release.wait(seconds)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert written.wait(5), "the other transaction did not get its rows"
        yield release
    finally:
        release.set()
        thread.join()


def send_now(token: str, rows: list[Delivery]) -> list:
    """Send claimed rows and wait for every result, as the engine's loop would (for `record`)."""
    jobs = delivery._jobs(token, rows)
    done = SimpleQueue()
    delivery._start(jobs, done)
    return [done.get(timeout=30) for _ in jobs]
