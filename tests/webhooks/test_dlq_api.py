"""Dead letter queue over the API: list, redrive by ids / all / filter, execution retry."""

import sqlite3

import pytest
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from devtools.loopback import LoopbackServer, Reply
from observability.models import PlatformEvent
from tests.webhooks.conftest import drain, enqueue, held_in_transaction
from webhooks.models import Delivery

pytestmark = pytest.mark.django_db


@pytest.fixture
def api() -> APIClient:
    return APIClient()


def dead(receiver: LoopbackServer, *execution_ids: str) -> list[Delivery]:
    return [drain(enqueue(receiver.url, execution_id=e)) for e in execution_ids]


def test_list_entries_and_filters(api):
    with LoopbackServer(default=Reply(410, body=b"gone")) as receiver:
        rows = dead(receiver, "exec_a", "exec_b", "exec_c")
    body = api.get("/api/v1/webhooks/dlq?limit=2&offset=1").json()
    assert body["total_count"] == 3 and len(body["entries"]) == 2
    entry = body["entries"][0]
    assert set(entry) >= {"id", "execution_id", "url", "event", "attempts", "last_status", "last_error", "dead_lettered_at"}
    assert entry["id"] == rows[1].id and entry["event"] == "execution.completed" and entry["last_status"] == 410
    assert entry["url"] == receiver.url and entry["attempts"] == 1
    only = api.get("/api/v1/webhooks/dlq?execution_id=exec_c").json()
    assert only["total_count"] == 1 and only["entries"][0]["execution_id"] == "exec_c"
    assert api.get("/api/v1/webhooks/dlq?subscription=sub_none").json()["total_count"] == 0
    bad = api.get("/api/v1/webhooks/dlq?limit=x")
    assert bad.status_code == 400 and bad.json()["error"] == "bad_request"


def test_redrive_by_ids_all_and_filter(api):
    with LoopbackServer(default=Reply(410)) as receiver:
        a, b, c = dead(receiver, "exec_a", "exec_b", "exec_c")
        receiver.default = Reply(200)
        by_ids = api.post("/api/v1/webhooks/dlq/redrive", {"ids": [a.id]}, format="json").json()
        assert by_ids == {"success": True, "processed": 1, "queued": 1}
        unknown = api.post("/api/v1/webhooks/dlq/redrive", {"ids": [a.id, 999_999]}, format="json").json()
        assert unknown == {"success": True, "processed": 0, "queued": 0}  # a is no longer dead; 999999 is nothing
        by_filter = api.post("/api/v1/webhooks/dlq/redrive", {"filter": {"execution_id": "exec_b"}}, format="json")
        assert by_filter.json()["queued"] == 1
        assert api.get("/api/v1/webhooks/dlq").json()["total_count"] == 1  # redriven ones left the queue
        assert api.post("/api/v1/webhooks/dlq/redrive", {"all": True}, format="json").json()["queued"] == 1
        rows = [drain(r) for r in (a, b, c)]
    assert all(r.status == Delivery.Status.DELIVERED for r in rows)
    assert {r.headers["webhook-id"] for r in receiver.requests} == {r.webhook_id for r in rows}
    assert PlatformEvent.objects.filter(type="webhook.redriven").count() == 3


def test_redrive_needs_a_selector(api):
    response = api.post("/api/v1/webhooks/dlq/redrive", {}, format="json")
    assert response.status_code == 400 and response.json()["error"] == "bad_request"
    response = api.post("/api/v1/webhooks/dlq/redrive", {"ids": ["x"]}, format="json")
    assert response.status_code == 400


def test_execution_webhook_retry(api):
    assert api.post("/api/v1/executions/exec_none/webhook/retry").status_code == 404
    with LoopbackServer(default=Reply(410)) as receiver:
        [row] = dead(receiver, "exec_r")
        receiver.default = Reply(200)
        response = api.post("/api/v1/executions/exec_r/webhook/retry")
        assert response.status_code == 202 and response.json()["status"] == "queued"
        row = drain(row)
        assert row.status == Delivery.Status.DELIVERED
        # Also for one that was delivered already: sent again, same webhook-id.
        assert api.post("/api/v1/executions/exec_r/webhook/retry").status_code == 202
        row = drain(row)
    assert len(receiver.requests) == 3 and len({r.headers["webhook-id"] for r in receiver.requests}) == 1


def test_redrive_all_of_a_queue_longer_than_one_statement_may_name(api):
    # After an outage the queue may hold more dead letters than one statement takes
    # parameters (PostgreSQL 65535, SQLite 999 before 3.32): this connection takes 999.
    now = timezone.now()
    Delivery.objects.bulk_create(
        Delivery(
            kind=Delivery.Kind.COMPLETION, event_type="execution.completed", execution_id=f"exec_{i}",
            url="https://hooks.example.com/h", body=b"{}", status=Delivery.Status.DEAD, attempts=6,
            dead_lettered_at=now,
        )
        for i in range(1200)
    )
    limit = None
    if connection.vendor == "sqlite":
        connection.ensure_connection()
        limit = connection.connection.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
    try:
        response = api.post("/api/v1/webhooks/dlq/redrive", {"all": True}, format="json")
    finally:
        if limit is not None:
            connection.connection.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, limit)
    assert response.status_code == 200, response.json()
    assert response.json() == {"success": True, "processed": 1200, "queued": 1200}
    assert not Delivery.objects.filter(status=Delivery.Status.DEAD).exists()
    assert PlatformEvent.objects.filter(type="webhook.redriven").count() == 1200


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif("connection.vendor != 'postgresql'")  # SQLite: IMMEDIATE transactions, one redrive at a time
def test_a_redrive_beside_another_of_the_same_rows_moves_and_announces_nothing_twice():
    """Two operators redriving the same dead letters at once: the second waits, then finds them redriven."""
    import threading

    from webhooks import delivery

    with LoopbackServer(default=Reply(410)) as receiver:
        rows = dead(receiver, "exec_a", "exec_b")
    ids = [r.id for r in rows]

    def first() -> None:  # a redrive in its transaction, not committed yet
        locked = list(Delivery.objects.select_for_update().filter(id__in=ids).values_list("id", flat=True))
        Delivery.objects.filter(id__in=locked).update(status=Delivery.Status.PENDING)

    with held_in_transaction(first) as release:
        announced = PlatformEvent.objects.filter(type="webhook.redriven").count()
        threading.Timer(0.5, release.set).start()  # the first commits while the second waits on its rows
        assert delivery.redrive(Delivery.objects.filter(id__in=ids)) == 0
    assert PlatformEvent.objects.filter(type="webhook.redriven").count() == announced
