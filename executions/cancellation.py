"""Cancelling an execution on request, and telling its agent (best effort)."""

from collections.abc import Iterable
from typing import Any

from django.db import transaction

from agentfield_site.auth import OPEN, Caller
from agentfield_site.lib.timefmt import iso

from . import dispatch, lifecycle
from .errors import ExecutionError, InvalidTransition, NotCancellable, UnknownExecution
from .models import AgentNode, Execution
from .ownership import executions_of


def cancel(execution_id: str, reason: str = "", caller: Caller = OPEN) -> dict[str, Any]:
    """Cancel a non-terminal execution; `UnknownExecution` (or another key's), `NotCancellable` when terminal."""
    document, notice = _cancel(execution_id, reason, caller)
    if notice is not None:
        transaction.on_commit(lambda: dispatch.notify_cancel(*notice))
    return document


def cancel_many(execution_ids: Iterable[str], reason: str = "") -> tuple[int, list[tuple[str, str]]]:
    """Cancel each execution; their agents hear of it from one queued task.

    Returns how many were cancelled and (execution_id, why not) for the others.
    """
    cancelled, refused, notices = 0, [], []
    for execution_id in execution_ids:
        try:
            _, notice = _cancel(execution_id, reason, OPEN)
        except ExecutionError as exc:
            refused.append((execution_id, str(exc)))
            continue
        cancelled += 1
        if notice is not None:
            notices.append(notice)
    transaction.on_commit(lambda: dispatch.queue_cancel_notices(notices))
    return cancelled, refused


def _cancel(execution_id: str, reason: str, caller: Caller) -> tuple[dict[str, Any], tuple[str, str] | None]:
    """The cancel itself, and the (execution_id, base_url) notice its agent is owed, if any."""
    reason = (reason or "cancelled by request")[:500]
    notice = None
    if not caller.is_admin and not executions_of(caller).filter(pk=execution_id).exists():
        raise UnknownExecution(execution_id)
    try:
        with transaction.atomic():
            change = lifecycle.transition(
                execution_id, "cancelled", status_reason=reason, error=reason, error_category=""
            )
            execution = change.execution
            if not change.changed:
                raise NotCancellable(execution.status)
            node = AgentNode.objects.filter(pk=execution.agent_node_id).first()
            if node is not None and change.previous != "queued":
                notice = (execution_id, node.base_url)
    except Execution.DoesNotExist:
        raise UnknownExecution(execution_id) from None
    except InvalidTransition as exc:
        raise NotCancellable(exc.current) from None
    document = {
        "execution_id": execution.id,
        "previous_status": change.previous,
        "status": "cancelled",
        "reason": reason,
        "cancelled_at": iso(execution.completed_at),
    }
    return document, notice
