"""Dispatch to a real loopback agent: request shape, and every kind of outcome."""

import json
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from devtools.processes import free_port
from executions import dispatch, nodes, reports, submission
from executions.models import Execution
from observability.models import PlatformEvent

pytestmark = pytest.mark.django_db


def _submit(target: str = "analyzer.process", **ids) -> Execution:
    request = submission.Request(target=target, input={"document": "hi there"}, **ids)
    execution, _ = submission.submit(request, enqueue=False)
    return execution


def test_agent_gets_bare_input_and_execution_headers(node, agent):
    agent.default.body = {"summary": "hi"}
    execution = _submit(run_id="run_1", session_id="sess")
    assert dispatch.run(execution.id) == "succeeded"
    [call] = agent.requests
    assert call.path == "/reasoners/process"
    assert json.loads(call.body) == {"document": "hi there"}
    assert call.headers["X-Execution-ID"] == execution.id
    assert call.headers["X-Run-ID"] == "run_1"
    assert call.headers["X-Workflow-ID"] == "run_1"
    assert call.headers["X-Session-ID"] == "sess"
    assert "X-Actor-ID" not in call.headers
    execution.refresh_from_db()
    assert execution.status == "succeeded" and execution.result == {"summary": "hi"}
    assert execution.started_at and execution.completed_at and execution.duration_ms is not None
    types = list(PlatformEvent.objects.filter(execution_id=execution.id).values_list("type", flat=True))
    assert types == ["execution.created", "execution.started", "execution.completed"]
    done = PlatformEvent.objects.get(type="execution.completed")
    assert done.data["result"] == {"summary": "hi"} and done.data["duration_ms"] == execution.duration_ms


def test_skills_are_called_under_skills(node, agent):
    execution = _submit("analyzer.count")
    dispatch.run(execution.id)
    assert agent.requests[0].path == "/skills/count"


def test_202_leaves_it_running_for_the_callback(node, agent):
    agent.default.status, agent.default.body = 202, {"status": "processing"}
    execution = _submit()
    assert dispatch.run(execution.id) == "accepted"
    execution.refresh_from_db()
    assert execution.status == "running"
    assert execution.dispatch_state == Execution.Dispatch.ACCEPTED and execution.dispatch_lease_until is None


@pytest.mark.parametrize(
    ("status", "body", "category"),
    [(500, {"error": "boom"}, "agent_error"), (422, {"detail": "bad"}, "agent_error"), (200, b"not json", "bad_response")],
)
def test_agent_errors_fail_the_execution(node, agent, status, body, category):
    agent.default.status, agent.default.body = status, body
    execution = _submit()
    assert dispatch.run(execution.id) == "failed"
    execution.refresh_from_db()
    assert execution.status == "failed" and execution.error_category == category
    assert execution.error_details["http_status"] == status
    failed = PlatformEvent.objects.get(type="execution.failed")
    assert failed.data["error"] == execution.error


def test_unreachable_agent(node):
    node.base_url = f"http://127.0.0.1:{free_port()}"
    node.save()
    execution = _submit()
    dispatch.run(execution.id)
    execution.refresh_from_db()
    assert (execution.status, execution.error_category) == ("failed", "agent_unreachable")


def test_slow_agent_times_out(node, agent, settings):
    settings.AGENT_CALL_TIMEOUT = 0.3
    agent.default.delay = 1.0
    execution = _submit()
    dispatch.run(execution.id)
    execution.refresh_from_db()
    assert (execution.status, execution.error_category) == ("failed", "agent_timeout")


def test_only_one_claim_wins(node, agent):
    execution = _submit()
    assert dispatch.claim(execution.id) is not None
    assert dispatch.claim(execution.id) is None
    assert dispatch.run(execution.id) == "not_claimed"
    assert agent.requests == []


def test_lapsed_lease_is_requeued_and_dispatched_again(node, agent, django_capture_on_commit_callbacks):
    execution = _submit()
    assert dispatch.claim(execution.id) is not None  # a worker claims, then dies mid-call
    assert dispatch.requeue_lapsed() == 0, "a live lease is left alone"
    Execution.objects.filter(pk=execution.id).update(dispatch_lease_until=timezone.now() - timedelta(seconds=1))
    with django_capture_on_commit_callbacks(execute=False):
        assert dispatch.requeue_lapsed() == 1
    assert dispatch.requeue_lapsed() == 0, "requeued once"
    assert dispatch.run(execution.id) == "succeeded"
    execution.refresh_from_db()
    assert execution.dispatch_attempts == 2
    assert PlatformEvent.objects.filter(type="execution.started").count() == 1


def test_a_duplicate_wake_up_claims_the_oldest_waiting_execution(node, agent):
    first, second, third = _submit(), _submit(), _submit()
    claimed, token = dispatch.claim_next(first.id)
    assert claimed.id == first.id and dispatch.call(claimed, token) == "succeeded"
    assert dispatch.run(first.id) == "not_claimed", "the sync API dispatches its own execution only"
    # A second wake-up for `first` (a requeue raced its task): it takes `second`, the oldest waiting.
    claimed, token = dispatch.claim_next(first.id)
    assert claimed.id == second.id and dispatch.call(claimed, token) == "succeeded"
    assert [r.headers["X-Execution-ID"] for r in agent.requests] == [first.id, second.id]
    assert Execution.objects.get(pk=third.id).dispatch_state == Execution.Dispatch.QUEUED
    assert dispatch.claim_next()[0].id == third.id
    assert dispatch.claim_next(second.id) is None, "nothing is left waiting"


def test_a_claim_passes_over_a_node_at_its_cap(node, agent, settings):
    settings.AGENT_MAX_CALLS_PER_NODE = 2
    nodes.register({"id": "other", "base_url": agent.url, "version": "1", "reasoners": [{"id": "process"}]})
    first, second, third = _submit(), _submit(), _submit()
    elsewhere = _submit("other.process")
    assert [dispatch.claim_next(e.id)[0].id for e in (first, second)] == [first.id, second.id]
    # `analyzer` has two calls in flight: its third waits, and the other node's execution goes first.
    assert dispatch.claim_next(third.id)[0].id == elsewhere.id
    assert dispatch.claim_next(third.id) is None
    assert Execution.objects.get(pk=third.id).dispatch_state == Execution.Dispatch.QUEUED
    Execution.objects.filter(pk=first.id).update(dispatch_state=Execution.Dispatch.DONE, dispatch_lease_until=None)  # a call ended
    assert dispatch.claim_next()[0].id == third.id


def test_a_claim_passes_over_a_key_at_its_cap(node, agent, settings):
    """One key's executions, on however many nodes, hold at most AGENT_MAX_CALLS_PER_KEY calls."""
    from agentfield_site.models import ApiKey

    settings.AGENT_MAX_CALLS_PER_KEY = 2
    nodes.register({"id": "other", "base_url": agent.url, "version": "1", "reasoners": [{"id": "process"}]})
    busy, calm = ApiKey.create("busy")[0], ApiKey.create("calm")[0]

    def submit(target: str, owner: ApiKey) -> Execution:
        request = submission.Request(target=target, input={}, owner_id=owner.id, submitted_by_id=owner.id)
        return submission.submit(request, enqueue=False)[0]

    mine = [submit("analyzer.process", busy), submit("other.process", busy), submit("other.process", busy)]
    theirs = submit("analyzer.process", calm)
    # The oldest, then the other key's (it has no call in flight), then the busy key's second.
    assert [dispatch.claim_next()[0].id for _ in range(3)] == [mine[0].id, theirs.id, mine[1].id]
    assert dispatch.claim_next(mine[2].id) is None, "the busy key has two calls in flight"


def test_a_key_with_no_call_in_flight_goes_before_another_keys_backlog(node, agent, settings):
    """On a node two keys share, a key that submits now and then is not queued behind the other's backlog."""
    from agentfield_site.models import ApiKey

    settings.AGENT_MAX_CALLS_PER_NODE = 2
    busy, calm = ApiKey.create("busy")[0], ApiKey.create("calm")[0]

    def submit(owner: ApiKey) -> Execution:
        request = submission.Request(target="analyzer.process", input={}, owner_id=owner.id, submitted_by_id=owner.id)
        return submission.submit(request, enqueue=False)[0]

    backlog = [submit(busy) for _ in range(5)]
    first, _ = dispatch.claim_next()
    assert first.id == backlog[0].id
    theirs = submit(calm)
    assert dispatch.claim_next()[0].id == theirs.id, "the calm key has no call in flight: it goes first"
    assert dispatch.claim_next() is None, "the node is at its cap"
    Execution.objects.filter(pk=first.id).update(dispatch_state=Execution.Dispatch.DONE, dispatch_lease_until=None)
    assert dispatch.claim_next()[0].id == backlog[1].id, "then the backlog, in order"


def test_executions_left_waiting_get_one_wake_up_per_tick(node, agent, settings, monkeypatch):
    """Their own wake-ups found no free thread, or their node at its cap: the sweeper's tick makes up for it."""
    settings.AGENT_MAX_CALLS_PER_NODE = 1
    enqueued: list[tuple] = []
    monkeypatch.setattr(dispatch.tasks, "enqueue", lambda *args, **kwargs: enqueued.append(args))
    executions = [_submit() for _ in range(3)]
    dispatch.wake_waiting()
    assert enqueued == [], "not for executions submitted a moment ago: their own wake-ups are on the way"
    Execution.objects.update(created_at=timezone.now() - timedelta(seconds=5))
    dispatch.wake_waiting()
    assert enqueued == [(dispatch.TASK, None)], "one for all of them"
    claimed, _ = dispatch.claim_next()
    enqueued.clear()
    dispatch.wake_waiting()
    assert enqueued == [], "not while their node is at its cap: the call that ends takes the next"
    waiting = next(e for e in executions if e.id != claimed.id)
    assert dispatch.claim(waiting.id) is None, "the sync API waits for room too"


def test_stale_executions_time_out_and_fire_their_webhook(node, completions, settings):
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    request = submission.Request(target="analyzer.process", input={}, webhook={"url": "http://127.0.0.1:9/h"})
    execution, _ = submission.submit(request, enqueue=False)
    settings.EXECUTION_TIMEOUT = 3600
    assert dispatch.expire_stale() == 0
    Execution.objects.filter(pk=execution.id).update(created_at=timezone.now() - timedelta(hours=2))
    assert dispatch.expire_stale() == 1
    execution.refresh_from_db()
    assert execution.status == "timeout"
    assert PlatformEvent.objects.filter(type="execution.timeout", execution_id=execution.id).count() == 1
    [call] = completions
    assert call["payload"]["event"] == "execution.failed" and call["payload"]["status"] == "timeout"
    assert dispatch.expire_stale() == 0


@pytest.mark.django_db(transaction=True)
def test_callback_that_beats_the_202_keeps_its_outcome(node, agent):
    """Agents may report before their 202 reaches us: the finished execution stays finished."""

    def report_first(request):
        reports.apply_status(request.headers["X-Execution-ID"], {"status": "succeeded", "result": {"early": True}})
        connection.close()

    agent.on_request = report_first
    agent.default.status, agent.default.body = 202, {"status": "processing"}
    execution = _submit()
    assert dispatch.run(execution.id) == "accepted"
    execution.refresh_from_db()
    assert execution.status == "succeeded" and execution.result == {"early": True}
    assert execution.dispatch_state == Execution.Dispatch.DONE
    assert dispatch.requeue_lapsed() == 0


@pytest.mark.django_db(transaction=True)
def test_the_task_starts_calls_on_threads_and_returns_at_once(node, agent):
    """`take` hands claimed executions to call threads; a thread whose call ends claims the next one."""
    from devtools.waiting import wait_for

    agent.default.delay = 2
    executions = [_submit() for _ in range(5)]
    assert dispatch.take(executions[0].id) == 5, "one thread per waiting execution, up to AGENT_CALLS_PER_WORKER"
    assert {e.status for e in Execution.objects.all()} == {"running"}, "the task does not wait for the agent"
    assert dispatch.take(executions[0].id) == 0, "nothing is left waiting"
    wait_for(lambda: all(e.status == "succeeded" for e in Execution.objects.all()), timeout=10, what="the calls")
    assert sorted(r.headers["X-Execution-ID"] for r in agent.requests) == sorted(e.id for e in executions)
    free = dispatch._this_process_threads()
    wait_for(lambda: free._value == settings.AGENT_CALLS_PER_WORKER, timeout=5, what="every thread to be free")


def test_a_key_cap_that_covers_every_thread_is_reported(settings):
    from django.core import checks

    from agentfield_site.apps import check_settings

    assert "agentfield.W003" not in [m.id for m in check_settings(None)]
    settings.AGENT_MAX_CALLS_PER_KEY = settings.Q_CLUSTER["workers"] * settings.AGENT_CALLS_PER_WORKER
    [warning] = [m for m in check_settings(None) if m.id == "agentfield.W003"]
    assert warning.level == checks.WARNING and "AGENT_MAX_CALLS_PER_KEY" in warning.msg


@pytest.mark.parametrize("outcome", ["cancel", "callback", "expiry"])
def test_a_call_still_going_counts_against_its_nodes_cap_when_its_execution_ends_without_it(
    node, agent, settings, outcome
):
    """A cancel, the agent's own callback or the expiry ends the execution; the call goes on, holding its thread.

    Before, the ended execution left the count at once: cancelling (or reporting)
    each call as it went out sent a node any number of calls at once, and took
    every call thread of every worker.
    """
    from executions import cancellation

    settings.AGENT_MAX_CALLS_PER_NODE = 1
    first, second = _submit(), _submit()
    claimed, token = dispatch.claim_next()
    assert claimed.id == first.id
    if outcome == "cancel":
        cancellation.cancel(first.id)
    elif outcome == "callback":
        reports.apply_status(first.id, {"status": "succeeded", "result": {"early": True}})
    else:
        Execution.objects.filter(pk=first.id).update(created_at=timezone.now() - timedelta(hours=2))
        settings.EXECUTION_TIMEOUT = 3600
        assert dispatch.expire_stale() == 1
    assert Execution.objects.get(pk=first.id).is_terminal
    assert dispatch.claim_next() is None, "the node's one call is still going"
    assert dispatch.call(claimed, token) in ("succeeded", "failed")  # its outcome is dropped; the call has ended
    assert Execution.objects.get(pk=first.id).status != "running"
    assert dispatch.claim_next()[0].id == second.id


def test_an_ended_execution_whose_worker_died_mid_call_frees_its_nodes_share_when_the_lease_lapses(node, settings):
    from executions import cancellation

    settings.AGENT_MAX_CALLS_PER_NODE = 1
    first, second = _submit(), _submit()
    assert dispatch.claim_next()[0].id == first.id  # and the worker dies mid-call
    cancellation.cancel(first.id)
    assert dispatch.claim_next() is None
    Execution.objects.filter(pk=first.id).update(dispatch_lease_until=timezone.now() - timedelta(seconds=1))
    assert dispatch.requeue_lapsed() == 0, "an ended execution is not sent again"
    assert dispatch.claim_next()[0].id == second.id


def test_a_lease_shorter_than_a_call_is_reported(settings):
    from agentfield_site.apps import check_settings

    assert "agentfield.W004" not in [m.id for m in check_settings(None)]
    settings.DISPATCH_LEASE_SECONDS = settings.AGENT_CALL_TIMEOUT
    assert "agentfield.W004" in [m.id for m in check_settings(None)]
