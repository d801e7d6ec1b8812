"""What agents report back: status callbacks, workflow progress events and logs."""

from typing import Any

from django.db import transaction

from agentfield_site.auth import OPEN, Caller
from observability.events import build, publish_many

from . import lifecycle
from .errors import InvalidTransition, UnknownExecution
from .models import TERMINAL, Execution
from .ownership import executions_of

PROGRESS = ("running", "waiting", "paused")


def apply_status(execution_id: str, report: dict[str, Any], caller: Caller = OPEN) -> Execution:
    """The agent's `/executions/{id}/status` callback (validated by `StatusCallbackSerializer`): the new state.

    An agent key reports only for executions dispatched to its own nodes; others
    are `UnknownExecution`. An illegal change is `InvalidTransition`.
    """
    if not caller.is_admin and not executions_of(caller).filter(pk=execution_id).exists():
        raise UnknownExecution(execution_id)
    status = report["status"]
    fields: dict[str, Any] = {}
    if "result" in report:
        fields["result"] = report["result"]
    if report.get("error") is not None:
        fields["error"] = report["error"]
        if status in TERMINAL and status != "succeeded":
            fields["error_category"] = "agent_error"
    if "error_details" in report:
        fields["error_details"] = report["error_details"]
    if "status_reason" in report:
        fields["status_reason"] = report["status_reason"]
    if status in TERMINAL:
        fields["duration_ms"] = report.get("duration_ms")
        fields["completed_at"] = report.get("completed_at")
    try:
        return lifecycle.transition(execution_id, status, **fields).execution
    except Execution.DoesNotExist:
        raise UnknownExecution(execution_id) from None


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
    except (Execution.DoesNotExist, InvalidTransition):
        return False


def append_logs(execution_id: str, entries: list[dict], caller: Caller = OPEN) -> int:
    """Each log entry (validated by `LogsRequestSerializer`) becomes an `execution.log` event; returns how many."""
    execution = executions_of(caller).filter(pk=execution_id).first()
    if execution is None:
        raise UnknownExecution(execution_id)
    events = [
        build(
            "execution.log",
            execution_id=execution.id,
            workflow_id=execution.workflow_id,
            agent_node_id=execution.agent_node_id,
            status=execution.status,
            data={**lifecycle.event_data(execution, outcome=False), "entry": entry},
        )
        for entry in entries
    ]
    with transaction.atomic():
        publish_many(events)
    return len(events)
