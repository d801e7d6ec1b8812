"""What agents report back: status callbacks, workflow progress events and logs."""

from typing import Any

from django.db import transaction

from agentfield_site.auth import OPEN, Caller
from agentfield_site.lib.api import ApiError
from observability.events import build, publish_many

from . import lifecycle
from .models import TERMINAL, Execution
from .ownership import executions_of

MAX_LOG_ENTRIES = 500
PROGRESS = ("running", "waiting", "paused")


def _status_of(value: object) -> str:
    try:
        return lifecycle.normalize(value)
    except ValueError:
        raise ApiError(400, "bad_request", f"Unknown status {value!r}.", error_category="bad_request") from None


# What the BIGINT column holds; a larger duration_ms would fail the write (a 500).
_MAX_DURATION_MS = 2**63 - 1


def _duration_ms(value: object) -> int | None:
    """The agent's duration_ms: None when absent or not a number; 400 when it cannot be stored."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        return None
    if value > _MAX_DURATION_MS:
        raise ApiError(
            400, "invalid_field", f"duration_ms must be at most {_MAX_DURATION_MS}.", error_category="bad_request"
        )
    return int(value)


def _not_found(execution_id: str) -> ApiError:
    return ApiError(404, "not_found", f"No execution {execution_id!r}.", error_category="not_found")


def apply_status(execution_id: str, body: dict[str, Any], caller: Caller = OPEN) -> Execution:
    """The agent's `/executions/{id}/status` callback: 404, 400, 409 or the new state.

    An agent key reports only for executions dispatched to its own nodes.
    """
    if not caller.is_admin and not executions_of(caller).filter(pk=execution_id).exists():
        raise _not_found(execution_id)
    status = _status_of(body.get("status"))
    fields: dict[str, Any] = {}
    if "result" in body:
        fields["result"] = body["result"]
    error = body.get("error")
    if error is not None:
        fields["error"] = error if isinstance(error, str) else str(error)
        if status in TERMINAL and status != "succeeded":
            fields["error_category"] = "agent_error"
    if "error_details" in body:
        fields["error_details"] = body["error_details"]
    if isinstance(body.get("status_reason"), str):
        fields["status_reason"] = body["status_reason"]
    if status in TERMINAL:
        fields["duration_ms"] = _duration_ms(body.get("duration_ms"))
        fields["completed_at"] = body.get("completed_at")
    try:
        return lifecycle.transition(execution_id, status, **fields).execution
    except Execution.DoesNotExist:
        raise _not_found(execution_id) from None
    except lifecycle.InvalidTransition as exc:
        raise ApiError(
            409, "invalid_transition", str(exc), status=exc.current, requested_status=exc.requested
        ) from None


def apply_workflow_event(body: dict[str, Any], caller: Caller = OPEN) -> bool:
    """A progress event from an agent; True when it moved one of our executions.

    Agents also report their own nested calls here, under ids this control plane
    never issued, and send a last event after the terminal status callback: those
    are acknowledged and ignored. Terminal outcomes come only through the status
    callback, so one execution never has two sources for its result.
    """
    execution_id = body.get("execution_id")
    if not isinstance(execution_id, str) or not execution_id:
        return False
    try:
        status = lifecycle.normalize(body.get("status"))
    except ValueError:
        return False
    if status not in PROGRESS:
        return False
    if not caller.is_admin and not executions_of(caller).filter(pk=execution_id).exists():
        return False  # another node's execution: ignored like an id we never issued
    try:
        return lifecycle.transition(execution_id, status).changed
    except (Execution.DoesNotExist, lifecycle.InvalidTransition):
        return False


def append_logs(execution_id: str, entries: object, caller: Caller = OPEN) -> int:
    """Each log entry becomes an `execution.log` event; returns how many."""
    if isinstance(entries, dict):
        entries = [entries]
    if not isinstance(entries, list):
        raise ApiError(400, "bad_request", "`entries` must be a list of objects.", error_category="bad_request")
    if len(entries) > MAX_LOG_ENTRIES:
        raise ApiError(
            400, "bad_request", f"At most {MAX_LOG_ENTRIES} entries per request.", error_category="bad_request"
        )
    execution = executions_of(caller).filter(pk=execution_id).first()
    if execution is None:
        raise _not_found(execution_id)
    events = [
        build(
            "execution.log",
            execution_id=execution.id,
            workflow_id=execution.workflow_id,
            agent_node_id=execution.agent_node_id,
            status=execution.status,
            data={
                "target": execution.target,
                "reasoner_id": execution.reasoner_id,
                "entry": entry if isinstance(entry, dict) else {"message": str(entry)},
            },
        )
        for entry in entries
    ]
    with transaction.atomic():
        publish_many(events)
    return len(events)
