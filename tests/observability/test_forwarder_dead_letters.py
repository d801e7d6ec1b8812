"""Batches the collector will not take become per-event dead letters; redrive sends them again."""

import pytest
from rest_framework.test import APIClient

from devtools.loopback import LoopbackServer, Reply
from observability import events
from observability.forwarder import runner
from observability.models import ForwarderDeadLetter, ForwarderState

BASE = "/api/v1/settings/observability-webhook"


@pytest.fixture
def api() -> APIClient:
    return APIClient()


def publish(count: int) -> list[int]:
    saved = events.publish_many(
        events.build("node.online", agent_node_id=f"n{i}") for i in range(count)
    )
    return [e.id for e in saved]


def configure(api: APIClient, url: str) -> None:
    response = api.post(BASE, {"url": url, "secret": "s3cret"}, format="json")
    assert response.status_code == 200, response.content


@pytest.mark.django_db
def test_a_failing_collector_gets_three_attempts_then_every_event_is_dead_lettered(fast, api):
    with LoopbackServer.collector(status=500) as collector:
        configure(api, collector.url)
        ids = publish(15)
        runner.run(seconds=10, linger=0)
        assert len(collector.requests) == 6, "two batches, three attempts each"
        per_batch: dict[str, int] = {}
        for request in collector.requests:
            per_batch[request.headers["webhook-id"]] = (
                per_batch.get(request.headers["webhook-id"], 0) + 1
            )
        assert sorted(per_batch.values()) == [3, 3], "retries keep the batch's webhook-id"

    assert ForwarderState.get().cursor == ids[-1], "the cursor moves past dead-lettered batches"
    page = api.get(f"{BASE}/dlq", {"limit": 10}).json()
    assert page["total_count"] == 15
    assert [e["event_id"] for e in page["entries"]] == ids[:10], "oldest first"
    entry = page["entries"][0]
    assert entry["retry_count"] == 3
    assert entry["event_type"] == "node.online" and entry["event_source"] == "node"
    assert "500" in entry["error_message"]
    assert entry["payload"]["event_id"] == ids[0]
    assert set(entry) >= {"id", "event_timestamp", "created_at"}
    rest = api.get(f"{BASE}/dlq", {"limit": 10, "offset": 10}).json()
    assert [e["event_id"] for e in rest["entries"]] == ids[10:]
    status = api.get(f"{BASE}/status").json()
    assert status["dead_letter_count"] == 15
    assert status["events_forwarded"] == 0
    assert "500" in status["last_error"]


@pytest.mark.django_db
def test_a_4xx_goes_to_the_dead_letter_queue_at_once(fast, api):
    with LoopbackServer.collector(status=400) as collector:
        configure(api, collector.url)
        publish(3)
        runner.run(seconds=10, linger=0)
        assert len(collector.requests) == 1, "no retry for a 400"
    assert [e.retry_count for e in ForwarderDeadLetter.objects.all()] == [1, 1, 1]


@pytest.mark.django_db
def test_a_nul_in_the_collectors_answer_is_recorded_not_a_wedge(fast, api):
    """The error quotes the collector's body: with a NUL kept, PostgreSQL refused the write every run."""
    with LoopbackServer(path="/collect", default=Reply(400, body=b"no\x00thanks")) as collector:
        configure(api, collector.url)
        ids = publish(2)
        runner.run(seconds=10, linger=0)
        assert len(collector.requests) == 1
    assert ForwarderState.get().cursor == ids[-1]
    assert [e.error_message for e in ForwarderDeadLetter.objects.order_by("id")] == ["HTTP 400: no\ufffdthanks"] * 2
    assert api.get(f"{BASE}/status").json()["last_error"] == "HTTP 400: no\ufffdthanks"


@pytest.mark.django_db
def test_429_and_5xx_are_retried_and_then_delivered(fast, api):
    with LoopbackServer.collector(first=[429, 502]) as collector:
        configure(api, collector.url)
        ids = publish(2)
        runner.run(seconds=10, linger=0)
        assert [r.status for r in collector.requests] == [429, 502, 200]
        assert collector.accepted_ids() == ids
    assert ForwarderDeadLetter.objects.count() == 0
    assert api.get(f"{BASE}/status").json()["events_forwarded"] == 2


@pytest.mark.django_db
def test_redrive_delivers_every_entry_across_pages_and_empties_the_queue(fast, api):
    fast.OBSERVABILITY_BATCH_SIZE = 3  # several redrive batches and chunks
    # 69 batches, three attempts each, one at a time: the pauses between attempts
    # are what this test does not look at (the other tests here do).
    fast.OBSERVABILITY_RETRY_SCHEDULE = [0.01, 0.01]
    with LoopbackServer.collector(status=503) as collector:
        configure(api, collector.url)
        ids = publish(205)
        runner.run(seconds=30, linger=0)
        assert api.get(f"{BASE}/dlq").json()["total_count"] == 205

        # Still failing: nothing leaves the queue, attempts are counted.
        result = api.post(f"{BASE}/redrive").json()
        assert result == {
            "success": False,
            "message": result["message"],
            "processed": 205,
            "failed": 205,
        }
        assert ForwarderDeadLetter.objects.count() == 205
        assert set(ForwarderDeadLetter.objects.values_list("retry_count", flat=True)) == {4}

        collector.default.status = 200
        result = api.post(f"{BASE}/redrive").json()
        assert (result["success"], result["processed"], result["failed"]) == (True, 205, 0)
        assert sorted(collector.accepted_ids()) == ids, "every entry delivered, none skipped"
        assert api.get(f"{BASE}/dlq").json() == {
            "entries": [],
            "total_count": 0,
            "limit": 50,
            "offset": 0,
        }

        result = api.post(f"{BASE}/redrive").json()
        assert (result["success"], result["processed"], result["failed"]) == (True, 0, 0)


@pytest.mark.django_db
def test_clear_empties_the_queue(fast, api):
    with LoopbackServer.collector(status=400) as collector:
        configure(api, collector.url)
        publish(4)
        runner.run(seconds=10, linger=0)
    assert api.get(f"{BASE}/dlq").json()["total_count"] == 4
    response = api.delete(f"{BASE}/dlq")
    assert response.status_code == 200 and response.json()["success"] is True
    assert api.get(f"{BASE}/dlq").json()["total_count"] == 0


@pytest.mark.django_db
def test_redrive_without_a_configuration_is_a_clear_409(fast, api):
    response = api.post(f"{BASE}/redrive")
    assert response.status_code == 409
    assert response.json()["error"] == "not_configured"


@pytest.mark.django_db
def test_bad_paging_is_a_400(fast, api):
    for query in ({"limit": "x"}, {"offset": "-1"}, {"limit": "100000"}):
        response = api.get(f"{BASE}/dlq", query)
        assert response.status_code == 400, query
        assert response.json()["error"] == "bad_request"


@pytest.mark.django_db
def test_a_success_clears_the_last_error(fast, api):
    with LoopbackServer.collector(status=500) as collector:
        configure(api, collector.url)
        publish(2)
        runner.run(seconds=10, linger=0)
        failing = api.get(f"{BASE}/status").json()
        assert "500" in failing["last_error"] and failing["last_error_at"]

        collector.default.status = 200
        publish(3)
        runner.run(seconds=10, linger=0)
    status = api.get(f"{BASE}/status").json()
    assert status["last_error"] is None and status["last_error_at"] is None
    assert status["events_forwarded"] == 3 and status["dead_letter_count"] == 2


@pytest.mark.django_db
def test_redriven_events_count_as_forwarded(fast, api):
    with LoopbackServer.collector(status=503) as collector:
        configure(api, collector.url)
        publish(4)
        runner.run(seconds=10, linger=0)
        assert api.get(f"{BASE}/status").json()["events_forwarded"] == 0

        collector.default.status = 200
        assert api.post(f"{BASE}/redrive").json()["processed"] == 4
    status = api.get(f"{BASE}/status").json()
    assert (status["events_forwarded"], status["dead_letter_count"], status["last_error"]) == (4, 0, None)
    assert status["last_forwarded_at"] is not None


@pytest.mark.django_db(transaction=True)
def test_a_second_redrive_while_one_runs_is_a_409_and_the_collector_gets_each_event_once(fast, api):
    """Two redrives at once (an operator in the admin, another through the API) used to both send
    every entry they read before either deleted it."""
    import threading

    from django.db import connections

    from observability.forwarder import dead_letters

    with LoopbackServer.collector(status=400) as collector:
        configure(api, collector.url)
        ids = publish(30)
        runner.run(seconds=10, linger=0)
        assert ForwarderDeadLetter.objects.count() == 30
        collector.reset()
        collector.default.status, collector.default.delay = 200, 0.5  # a slow collector that takes them

        first: dict = {}

        def redrive_in_admin() -> None:
            try:
                first.update(dead_letters.redrive())
            finally:
                connections.close_all()

        running = threading.Thread(target=redrive_in_admin)
        running.start()
        try:
            # Wait until the first has its batches out, then ask again through the API.
            for _ in range(200):
                if collector.requests:
                    break
                threading.Event().wait(0.01)
            second = api.post(f"{BASE}/redrive")
        finally:
            running.join(timeout=30)
        assert second.status_code == 409 and second.json()["error"] == "conflict", second.content
        assert (first["success"], first["processed"], first["failed"]) == (True, 30, 0)
        assert sorted(collector.accepted_ids()) == ids, "each event once"
        assert ForwarderDeadLetter.objects.count() == 0
        again = api.post(f"{BASE}/redrive")
        assert again.status_code == 200 and again.json()["processed"] == 0, "the lease was let go"
