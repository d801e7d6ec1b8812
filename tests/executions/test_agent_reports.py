"""What agents report: the status callback, workflow progress events and logs."""

import pytest

from executions import dispatch, submission
from executions.models import Execution
from observability.models import PlatformEvent

pytestmark = pytest.mark.django_db


@pytest.fixture
def running(node, agent) -> Execution:
    agent.default.status, agent.default.body = 202, {"status": "processing"}
    execution, _ = submission.submit(submission.Request(target="analyzer.process", input={}), enqueue=False)
    dispatch.run(execution.id)
    return Execution.objects.get(pk=execution.id)


def test_sdk_status_callback_succeeds_the_execution(api, running):
    body = {"status": "succeeded", "result": {"words": 2}, "duration_ms": 12,
            "completed_at": "2026-01-01T00:00:00+00:00", "execution_id": running.id, "reasoner": "process"}
    response = api.post(f"/api/v1/executions/{running.id}/status", body, format="json")
    assert response.status_code == 200
    doc = response.json()
    assert doc["status"] == "succeeded" and doc["result"] == {"words": 2} and doc["duration_ms"] == 12
    again = api.post(f"/api/v1/executions/{running.id}/status", body, format="json")
    assert again.status_code == 200, "a repeated terminal callback is idempotent"
    assert PlatformEvent.objects.filter(type="execution.completed").count() == 1


def test_alias_and_failure_with_details(api, running):
    response = api.post(f"/api/v1/executions/{running.id}/status",
                        {"status": "error", "error": "boom", "error_details": {"reason": "x"}}, format="json")
    assert response.status_code == 200
    running.refresh_from_db()
    assert (running.status, running.error, running.error_details) == ("failed", "boom", {"reason": "x"})
    assert running.error_category == "agent_error"


def test_conflicting_terminal_is_409(api, running):
    api.post(f"/api/v1/executions/{running.id}/status", {"status": "succeeded", "result": 1}, format="json")
    response = api.post(f"/api/v1/executions/{running.id}/status", {"status": "failed"}, format="json")
    assert response.status_code == 409
    assert response.json()["error"] == "invalid_transition" and response.json()["status"] == "succeeded"
    assert response.json()["error_category"] == "bad_request"


def test_loose_values_agents_send_are_tolerated(api, running):
    body = {"status": "failed", "error": {"code": 7}, "status_reason": ["not", "text"], "duration_ms": "12",
            "completed_at": "yesterday"}
    response = api.post(f"/api/v1/executions/{running.id}/status", body, format="json")
    assert response.status_code == 200, response.content
    doc = response.json()
    assert doc["status"] == "failed" and doc["error"] == "{'code': 7}" and "status_reason" not in doc
    assert doc["duration_ms"] >= 0 and doc["completed_at"]


@pytest.mark.parametrize("body", [{"status": "exploded"}, {}, [1], "x"])
def test_bad_callbacks_are_400(api, running, body):
    response = api.post(f"/api/v1/executions/{running.id}/status", body, format="json")
    assert response.status_code == 400


def test_callback_for_unknown_execution_is_404(api, db):
    assert api.post("/api/v1/executions/exec_nope/status", {"status": "succeeded"}, format="json").status_code == 404


def test_workflow_events_move_progress_only(api, running):
    paused = {"execution_id": running.id, "status": "paused", "agent_node_id": "analyzer"}
    assert api.post("/api/v1/workflow/executions/events", paused, format="json").json()["success"] is True
    running.refresh_from_db()
    assert running.status == "paused"
    terminal = {"execution_id": running.id, "status": "succeeded", "result": {"x": 1}}
    assert api.post("/api/v1/workflow/executions/events", terminal, format="json").status_code == 200
    running.refresh_from_db()
    assert running.status == "paused", "results come only through the status callback"
    for unknown in ({"execution_id": "exec_child_of_agent", "status": "running"}, {"status": "running"}, {}):
        assert api.post("/api/v1/workflow/executions/events", unknown, format="json").status_code == 200


def test_logs_become_execution_log_events(api, running):
    entries = [{"level": "INFO", "message": "one"}, {"level": "WARN", "message": "two"}]
    response = api.post(f"/api/v1/executions/{running.id}/logs", {"entries": entries}, format="json")
    assert response.status_code == 200
    logs = PlatformEvent.objects.filter(type="execution.log").order_by("id")
    assert [e.data["entry"]["message"] for e in logs] == ["one", "two"]
    assert all(e.execution_id == running.id and e.source == "execution" for e in logs)
    # The data every execution event carries, as the contract lists it.
    assert {"target", "reasoner_id", "duration_ms"} <= set(logs[0].data) and logs[0].data["target"] == running.target
    assert api.post(f"/api/v1/executions/{running.id}/logs", {"entries": "x"}, format="json").status_code == 400
    assert api.post("/api/v1/executions/exec_nope/logs", {"entries": []}, format="json").status_code == 404


def test_a_note_from_the_sdk_is_a_log_entry_of_its_execution(api, running):
    # `app.note()` posts here, naming its execution in the context headers it sends.
    body = {"message": "halfway", "tags": ["progress"], "timestamp": 1767225600.5, "agent_node_id": "analyzer"}
    response = api.post("/api/v1/executions/note", body, format="json", headers={"X-Execution-ID": running.id})
    assert response.status_code == 200 and response.json() == {"success": True, "accepted": 1}
    [log] = PlatformEvent.objects.filter(type="execution.log")
    assert log.execution_id == running.id
    assert log.data["entry"] == {"kind": "note", "message": "halfway", "tags": ["progress"], "timestamp": 1767225600.5}

    for headers in ({}, {"X-Execution-ID": "exec\x00"}, {"X-Execution-ID": "e" * 129}):
        refused = api.post("/api/v1/executions/note", body, format="json", headers=headers)
        assert refused.status_code == 400 and "X-Execution-ID" in refused.json()["message"]
    unknown = api.post("/api/v1/executions/note", body, format="json", headers={"X-Execution-ID": "exec_nope"})
    assert unknown.status_code == 404
    assert api.post("/api/v1/executions/note", {"tags": "x"}, format="json",
                    headers={"X-Execution-ID": running.id}).status_code == 400
    assert api.get("/api/v1/executions/note").status_code == 405


def test_a_big_outcome_is_carried_once_not_by_every_log_or_progress_event(api, running):
    """The outcome goes whole on the event that ends the execution only: copied into each
    log entry's event, a 1 MB result and 500 entries (a 10 KB request) were 500 MB of events;
    into each progress event, a 1 MB `error` was 1 MB more per pause or resume."""
    big = "x" * 100_000
    paused = {"status": "paused", "error": big}
    assert api.post(f"/api/v1/executions/{running.id}/status", paused, format="json").status_code == 200
    for status in ("running", "paused", "running"):
        body = {"execution_id": running.id, "status": status}
        assert api.post("/api/v1/workflow/executions/events", body, format="json").json()["applied"] is True
    done = {"status": "succeeded", "result": {"text": big}}
    assert api.post(f"/api/v1/executions/{running.id}/status", done, format="json").status_code == 200
    response = api.post(f"/api/v1/executions/{running.id}/logs", {"entries": [{"message": "m"}] * 50}, format="json")
    assert response.json()["accepted"] == 50

    events = PlatformEvent.objects.filter(execution_id=running.id).order_by("id")
    [completed] = [e for e in events if e.type == "execution.completed"]
    assert completed.data["result"] == {"text": big} and completed.data["error"] == big
    others = [e for e in events if e.pk != completed.pk]
    assert len(others) >= 50 + 4
    for event in others:
        assert "result" not in event.data, event.type
        if event.type == "execution.log":
            assert "error" not in event.data
        else:  # progress: what went wrong, cut as status_reason is
            assert event.data.get("error", big[:500]) == big[:500], event.type
        assert len(str(event.data)) < 1500, event.type
    assert sum(e.data.get("error") == big[:500] for e in others) >= 4  # the pause and what came after
    logs = [e for e in others if e.type == "execution.log"]
    assert len(logs) == 50 and logs[0].data["target"] == running.target and logs[0].data["entry"] == {"message": "m"}
