"""The state machine: aliases, allowed transitions, idempotent terminals, events, webhooks."""

import pytest

from executions import lifecycle, submission
from executions.models import STATUSES, TERMINAL, Execution
from observability.models import PlatformEvent

pytestmark = pytest.mark.django_db

ALLOWED = {
    ("pending", "queued"), ("pending", "running"), ("pending", "cancelled"),
    ("queued", "running"), ("queued", "cancelled"),
    ("waiting", "running"), ("waiting", "cancelled"), ("waiting", "failed"),
    ("running", "waiting"), ("running", "paused"), ("running", "succeeded"), ("running", "failed"),
    ("running", "cancelled"), ("running", "timeout"),
    ("paused", "running"), ("paused", "cancelled"),
}


def _execution(node, status="queued", webhook=None) -> Execution:
    body = {"input": {}}
    if webhook:
        body["webhook"] = webhook
    execution, _ = submission.submit(submission.Request(target="analyzer.process", **body), enqueue=False)
    Execution.objects.filter(pk=execution.id).update(status=status)
    return execution


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [("completed", "succeeded"), ("success", "succeeded"), ("ok", "succeeded"), ("done", "succeeded"),
     ("error", "failed"), ("failure", "failed"), ("canceled", "cancelled"), ("timed_out", "timeout"),
     ("in_progress", "running"), ("processing", "running"), ("RUNNING", "running")],
)
def test_aliases(alias, canonical):
    assert lifecycle.normalize(alias) == canonical


def test_unknown_status_is_refused():
    with pytest.raises(ValueError):
        lifecycle.normalize("exploded")


def test_transition_table_is_exactly_the_contract():
    for current in STATUSES:
        for requested in STATUSES:
            if current == requested:
                continue
            assert lifecycle.can_change(current, requested) == ((current, requested) in ALLOWED), (current, requested)
    for terminal in TERMINAL:
        assert not lifecycle.can_change(terminal, "timeout", system=True)
    assert lifecycle.can_change("queued", "timeout", system=True), "the stale sweep ends any active execution"


def test_illegal_transition_raises_and_changes_nothing(node):
    execution = _execution(node, "queued")
    with pytest.raises(lifecycle.InvalidTransition):
        lifecycle.transition(execution.id, "succeeded")
    execution.refresh_from_db()
    assert execution.status == "queued"
    assert not PlatformEvent.objects.filter(type="execution.completed").exists()


def test_event_types_per_transition(node):
    execution = _execution(node, "queued")
    for status in ("running", "waiting", "running", "paused", "running", "succeeded"):
        lifecycle.transition(execution.id, status, result={"n": 1} if status == "succeeded" else lifecycle._UNSET)
    types = list(PlatformEvent.objects.filter(execution_id=execution.id).values_list("type", flat=True))
    assert types == [
        "execution.created", "execution.started", "execution.updated", "execution.updated",
        "execution.updated", "execution.updated", "execution.completed",
    ]
    last = PlatformEvent.objects.filter(execution_id=execution.id).last()
    assert last.status == "succeeded" and last.data["result"] == {"n": 1}
    assert last.data["target"] == "analyzer.process" and last.data["reasoner_id"] == "process"
    assert isinstance(last.data["duration_ms"], int)


@pytest.mark.parametrize(("terminal", "event"), [("succeeded", "execution.completed"), ("failed", "execution.failed"),
                                                  ("cancelled", "execution.failed"), ("timeout", "execution.failed")])
def test_terminal_hands_one_completion_webhook_over(node, completions, settings, terminal, event):
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    execution = _execution(node, "running", webhook={"url": "http://127.0.0.1:9/h", "secret": "k", "headers": {"X-A": "1"}})
    change = lifecycle.transition(execution.id, terminal, result={"ok": 1}, error=None if terminal == "succeeded" else "bad")
    assert change.changed and change.previous == "running"
    again = lifecycle.transition(execution.id, terminal)
    assert not again.changed, "a repeated terminal status is a no-op"
    [call] = completions
    assert call["execution_id"] == execution.id and call["url"] == "http://127.0.0.1:9/h"
    assert call["secret"] == "k" and call["headers"] == {"X-A": "1"}
    payload = call["payload"]
    assert payload["event"] == event and payload["status"] == terminal
    for key in ("execution_id", "workflow_id", "run_id", "agent_node_id", "reasoner_id", "target", "type",
                "started_at", "completed_at", "duration_ms", "timestamp"):
        assert key in payload, key
    if terminal == "succeeded":
        assert payload["result"] == {"ok": 1} and "error_message" not in payload
    else:
        assert "result" not in payload and payload["error_message"]
    assert PlatformEvent.objects.filter(execution_id=execution.id, status=terminal).count() == 1


def test_no_webhook_no_completion(node, completions):
    execution = _execution(node, "running")
    lifecycle.transition(execution.id, "succeeded", result=1)
    assert completions == []


def test_other_terminal_after_terminal_is_refused(node):
    execution = _execution(node, "running")
    lifecycle.transition(execution.id, "succeeded", result=1)
    with pytest.raises(lifecycle.InvalidTransition) as info:
        lifecycle.transition(execution.id, "failed")
    assert info.value.current == "succeeded"


def test_compare_and_set_rereads_a_concurrent_change(node, monkeypatch):
    """A writer that moves the row between our read and our update is not overwritten."""
    execution = _execution(node, "running")
    real_filter = Execution.objects.filter
    moved = []

    def racing_filter(*args, **kwargs):
        if "status" in kwargs and not moved:
            moved.append(1)
            Execution.objects.all().filter(pk=execution.id).update(status="cancelled")
        return real_filter(*args, **kwargs)

    monkeypatch.setattr(Execution.objects, "filter", racing_filter)
    with pytest.raises(lifecycle.InvalidTransition) as info:
        lifecycle.transition(execution.id, "succeeded")
    assert info.value.current == "cancelled"
