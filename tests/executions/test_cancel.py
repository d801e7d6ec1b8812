"""Cancel: the response, 409 on terminal, and the best-effort notice to the agent."""

import time

import pytest

from devtools.waiting import wait_for
from executions import dispatch, submission
from executions.models import Execution
from observability.models import PlatformEvent

pytestmark = pytest.mark.django_db(transaction=True)


def _submit() -> Execution:
    execution, _ = submission.submit(submission.Request(target="analyzer.process", input={}), enqueue=False)
    return execution


def test_cancel_a_running_execution_tells_the_agent(api, node, agent):
    agent.default.status, agent.default.body = 202, {"status": "processing"}
    execution = _submit()
    dispatch.run(execution.id)
    response = api.post(f"/api/v1/executions/{execution.id}/cancel", {"reason": "user asked"}, format="json")
    assert response.status_code == 200
    body = response.json()
    assert body["execution_id"] == execution.id and body["previous_status"] == "running"
    assert body["status"] == "cancelled" and body["reason"] == "user asked" and body["cancelled_at"]
    assert PlatformEvent.objects.filter(type="execution.cancelled", execution_id=execution.id).count() == 1
    wait_for(lambda: len(agent.requests) >= 2, timeout=5, what="the cancel notice")
    assert agent.requests[-1].path == f"/_internal/executions/{execution.id}/cancel"


def test_cancel_twice_is_409_invalid_state(api, node):
    execution = _submit()
    assert api.post(f"/api/v1/executions/{execution.id}/cancel", {}, format="json").status_code == 200
    response = api.post(f"/api/v1/executions/{execution.id}/cancel", {}, format="json")
    assert response.status_code == 409 and response.json()["error"] == "invalid_state"
    assert response.json()["error_category"] == "bad_request"
    assert api.post("/api/v1/executions/exec_nope/cancel", {}, format="json").status_code == 404


def test_a_cancelled_queued_execution_is_never_dispatched(api, node, agent):
    execution = _submit()
    api.post(f"/api/v1/executions/{execution.id}/cancel", {}, format="json")
    assert dispatch.run(execution.id) == "not_claimed"
    assert agent.requests == []


def test_an_unreachable_agent_does_not_delay_or_fail_cancel(api, node):
    node.base_url = "http://127.0.0.1:9"
    node.save()
    execution = _submit()
    Execution.objects.filter(pk=execution.id).update(status="running")
    started = time.monotonic()
    assert api.post(f"/api/v1/executions/{execution.id}/cancel", {}, format="json").status_code == 200
    assert time.monotonic() - started < 1.5, "the notice (connect retries, 2 s timeout) runs in the background"


def test_cancel_refusals_are_domain_errors_the_admin_reports(node):
    from executions import cancellation
    from executions.errors import NotCancellable, UnknownExecution

    ended = _submit()
    cancellation.cancel(ended.id)
    with pytest.raises(NotCancellable):
        cancellation.cancel(ended.id)
    with pytest.raises(UnknownExecution):
        cancellation.cancel("exec_missing")
    live = _submit()
    cancelled, refused = cancellation.cancel_many([ended.id, "exec_missing", live.id], "bulk")
    assert cancelled == 1
    assert refused == [(ended.id, "The execution is already cancelled."), ("exec_missing", "No execution 'exec_missing'.")]
