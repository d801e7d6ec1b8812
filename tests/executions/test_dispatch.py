"""Dispatch to a real loopback agent: request shape, and every kind of outcome."""

import json
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from devtools.processes import free_port
from executions import dispatch, reports, submission
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
    assert dispatch.requeue_lapsed() == 0, "requeued once, with a fresh lease"
    assert dispatch.run(execution.id) == "succeeded"
    execution.refresh_from_db()
    assert execution.dispatch_attempts == 2
    assert PlatformEvent.objects.filter(type="execution.started").count() == 1


def test_a_duplicate_task_dispatches_the_oldest_waiting_execution(node, agent):
    first, second, third = _submit(), _submit(), _submit()
    assert dispatch.run(first.id, or_oldest=True) == "succeeded"
    assert dispatch.run(first.id) == "not_claimed", "the sync API dispatches its own execution only"
    # A second wake-up for `first` (a requeue raced its task): it takes `second`, the oldest waiting.
    assert dispatch.run(first.id, or_oldest=True) == "succeeded"
    assert [r.headers["X-Execution-ID"] for r in agent.requests] == [first.id, second.id]
    assert Execution.objects.get(pk=third.id).dispatch_state == Execution.Dispatch.QUEUED
    assert dispatch.run(third.id, or_oldest=True) == "succeeded"
    assert dispatch.run(second.id, or_oldest=True) == "not_claimed", "nothing is left waiting"
    assert len(agent.requests) == 3


def test_a_queued_row_is_looked_at_less_often_the_longer_it_waits(node, settings, django_capture_on_commit_callbacks,
                                                                  monkeypatch):
    """Behind a backlog its task is late, not lost: duplicates must not pile up in the broker."""
    settings.DISPATCH_LEASE_SECONDS = 5
    execution = _submit()
    enqueued: list[tuple] = []
    monkeypatch.setattr(dispatch.tasks, "enqueue", lambda *args, **kwargs: enqueued.append(args))

    def requeue_at_age(seconds: float) -> float:
        now = timezone.now()
        Execution.objects.filter(pk=execution.id).update(
            created_at=now - timedelta(seconds=seconds), dispatch_lease_until=now - timedelta(seconds=1)
        )
        enqueued.clear()
        # After commit, or in the transaction when the broker is the database: once either way.
        with django_capture_on_commit_callbacks(execute=True):
            assert dispatch.requeue_lapsed() == 1
        assert len(enqueued) == 1
        lease = Execution.objects.get(pk=execution.id).dispatch_lease_until
        return round((lease - now).total_seconds())

    assert requeue_at_age(1) == 5, "at least one lease"
    assert requeue_at_age(20) == 20, "then as long again as it has waited"
    assert requeue_at_age(3600) == 50, "at most ten leases"
    # A call in flight whose worker died goes out again after one lease, however old.
    assert dispatch.claim(execution.id) is not None
    Execution.objects.filter(pk=execution.id).update(dispatch_lease_until=timezone.now() - timedelta(seconds=1))
    with django_capture_on_commit_callbacks(execute=False):
        assert dispatch.requeue_lapsed() == 1
    lease = Execution.objects.get(pk=execution.id).dispatch_lease_until
    assert (lease - timezone.now()).total_seconds() <= 5


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
