"""The forwarder sends every event to a real collector in signed batches, in order."""

import json
import threading
import time

import pytest
import standardwebhooks

from agentfield_site.jobs import stopping
from agentfield_site.lib import signing
from devtools.loopback import LoopbackServer
from devtools.waiting import wait_for
from observability import events
from observability.forwarder import configuration, runner
from observability.models import ForwarderState

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def configure(url: str, **overrides) -> None:
    fields = {"url": url, "secret": SECRET, "headers": {"X-Team": "ops"}, "enabled": True}
    fields["event_types"] = overrides.pop("event_types", configuration.ALL_TYPES)
    fields.update(overrides)
    configuration.configure(**fields)


def publish(count: int, event_type: str = "execution.created") -> list[int]:
    saved = events.publish_many(
        events.build(event_type, execution_id=f"exec_{i}", status="queued", data={"n": i})
        for i in range(count)
    )
    return [e.id for e in saved]


@pytest.mark.django_db
def test_batches_of_ten_carry_every_event_with_both_signatures(fast):
    with LoopbackServer.collector() as collector:
        configure(collector.url)
        ids = publish(25)
        assert runner.run(seconds=10, linger=0) == 25

        assert collector.accepted_ids() == ids, "every event once, in id order"
        envelopes = collector.accepted()
        assert [e["event_count"] for e in envelopes] == [10, 10, 5]
        for request in collector.where(lambda r: True):
            headers = request.headers
            envelope = json.loads(request.body)
            assert headers["webhook-id"] == envelope["batch_id"]
            assert headers["X-Team"] == "ops"
            assert headers["Content-Type"] == "application/json"
            # Both signatures, checked the way receivers check them.
            standardwebhooks.Webhook(SECRET).verify(request.body, headers)
            assert headers["X-AgentField-Signature"] == signing.agentfield_signature(
                request.body, SECRET
            )
            assert set(envelope) >= {"batch_id", "event_count", "events", "timestamp"}
            assert len(envelope["events"]) == envelope["event_count"] <= 10
        first = envelopes[0]["events"][0]
        assert set(first) >= {"event_id", "event_type", "event_source", "timestamp", "data"}
        assert (first["event_type"], first["event_source"]) == ("execution.created", "execution")
        # AgentField's shape: the ids in `data`, the event's own data under `payload`.
        assert first["data"]["execution_id"] == "exec_0"
        assert first["data"]["payload"] == {"n": 0}

    state = ForwarderState.get()
    assert state.cursor == ids[-1]
    assert state.events_forwarded == 25
    assert configuration.status()["backlog"] == 0


@pytest.mark.django_db
def test_a_partial_batch_waits_for_the_flush_interval(fast):
    fast.OBSERVABILITY_FLUSH_INTERVAL = 0.5
    with LoopbackServer.collector() as collector:
        configure(collector.url)
        ids = publish(3)
        started = time.time()
        runner.run(seconds=10, linger=0)
        assert collector.accepted_ids() == ids
        (request,) = collector.requests
        assert request.at - started >= 0.4, (
            "a partial batch is held until its first event is 0.5 s old"
        )
        assert request.at - started < 3


@pytest.mark.django_db
def test_a_full_batch_goes_at_once(fast):
    fast.OBSERVABILITY_FLUSH_INTERVAL = 30
    with LoopbackServer.collector() as collector:
        configure(collector.url)
        ids = publish(10)
        started = time.time()
        runner.run(seconds=10, linger=0)
        assert collector.accepted_ids() == ids
        assert collector.requests[0].at - started < 10, "not held for the 30 s flush interval"


@pytest.mark.django_db
def test_event_type_filter_sends_matching_events_and_moves_past_the_rest(fast):
    with LoopbackServer.collector() as collector:
        configure(collector.url, event_types=["node.*", "execution.completed"])
        wanted = publish(4, "node.online") + publish(2, "execution.completed")
        publish(7, "execution.created")
        last = publish(1, "webhook.delivered")[-1]
        assert configuration.status()["backlog"] == 6, "backlog counts matching events only"
        runner.run(seconds=10, linger=0)
        assert collector.accepted_ids() == wanted
    assert ForwarderState.get().cursor == last, "filtered-out events advance the cursor"
    assert configuration.status()["backlog"] == 0


@pytest.mark.django_db
def test_events_written_while_the_collector_is_down_are_sent_later_in_order(fast):
    with LoopbackServer.collector() as collector:
        configure(collector.url)
        url = collector.url
    # Collector gone and no forwarder running: events pile up in the log.
    ids = publish(37)
    assert configuration.status()["backlog"] == 37
    assert ForwarderState.get().events_forwarded == 0

    fast.OBSERVABILITY_CONCURRENCY = 1
    with LoopbackServer.collector() as collector:
        configure(collector.url)  # same configuration, collector back (on a new port)
        assert collector.url != url
        assert configuration.status()["backlog"] == 37, "reconfiguring keeps the cursor"
        runner.run(seconds=10, linger=0)
        assert collector.accepted_ids() == ids, "all of them, in order, none twice"
    status = configuration.status()
    assert (status["backlog"], status["events_forwarded"], status["dead_letter_count"]) == (
        0,
        37,
        0,
    )
    assert status["last_forwarded_at"]


@pytest.mark.django_db
@pytest.mark.parametrize("collector", [
    {"status": 503},  # the batch waits out a retry delay of 30 s
    {"status": 200, "delay": 30.0},  # the attempt is on the wire for 30 s
], ids=["retrying", "slow"])
def test_a_stop_ends_the_run_without_waiting_out_a_retry_and_loses_nothing(fast, tmp_path, monkeypatch, collector):
    fast.OBSERVABILITY_RETRY_SCHEDULE = [30.0]
    fast.OBSERVABILITY_TIMEOUT = 40.0
    stop_file = tmp_path / "stop"
    monkeypatch.setenv(stopping.STOP_FILE, str(stop_file))
    monkeypatch.setattr(stopping, "_seen", False)
    monkeypatch.setattr(stopping, "_checked_at", float("-inf"))
    with LoopbackServer.collector(**collector) as receiver:
        configure(receiver.url)
        publish(5)

        def stop_after_the_first_attempt() -> None:
            wait_for(lambda: receiver.requests, timeout=10, what="the first attempt")
            stopping.request(str(stop_file))

        threading.Thread(target=stop_after_the_first_attempt, daemon=True).start()
        started = time.monotonic()
        runner.run(seconds=60, linger=0)
        took = time.monotonic() - started
    assert took < 5, f"the run waited {took:.1f} s (30 s to its retry, or to the collector's answer)"
    status = configuration.status()
    assert (status["backlog"], status["dead_letter_count"]) == (5, 0), "unacknowledged: the next run sends them again"


@pytest.mark.django_db
def test_nothing_is_sent_when_disabled_and_the_backlog_waits(fast):
    with LoopbackServer.collector() as collector:
        configure(collector.url, enabled=False)
        publish(5)
        assert runner.run(seconds=1, linger=0) == 0
        assert collector.requests == []
        configure(collector.url, enabled=True)
        runner.run(seconds=5, linger=0)
        assert len(collector.accepted_ids()) == 5


@pytest.mark.django_db
def test_a_new_configuration_starts_at_the_newest_event(fast):
    publish(4)
    with LoopbackServer.collector() as collector:
        configure(collector.url)
        ids = publish(2)
        runner.run(seconds=5, linger=0)
        assert collector.accepted_ids() == ids


@pytest.mark.django_db
def test_unsigned_batches_without_a_secret(fast):
    with LoopbackServer.collector() as collector:
        configure(collector.url, secret="")
        publish(1)
        runner.run(seconds=5, linger=0)
        (request,) = collector.requests
        assert "webhook-signature" not in request.headers
        assert "X-AgentField-Signature" not in request.headers
        assert request.headers["webhook-id"].startswith("batch_")
        assert request.headers["webhook-timestamp"]
