"""Cancelling an execution on request, and telling its agent (best effort)."""

from typing import Any

from django.db import transaction

from agentfield_site.auth import OPEN, Caller
from agentfield_site.lib.api import ApiError

from . import dispatch, lifecycle
from .documents import iso
from .models import AgentNode, Execution
from .ownership import executions_of


def cancel(execution_id: str, reason: str = "", caller: Caller = OPEN) -> dict[str, Any]:
    """Cancel a non-terminal execution; 404 when unknown (or another key's), 409 `invalid_state` when terminal."""
    reason = (reason or "cancelled by request")[:500]
    try:
        if not caller.is_admin and not executions_of(caller).filter(pk=execution_id).exists():
            raise Execution.DoesNotExist(execution_id)
        with transaction.atomic():
            change = lifecycle.transition(
                execution_id, "cancelled", status_reason=reason, error=reason, error_category=""
            )
            execution = change.execution
            if not change.changed:
                raise lifecycle.InvalidTransition(execution.status, "cancelled")
            node = AgentNode.objects.filter(pk=execution.agent_node_id).first()
            if node is not None and change.previous != "queued":
                base_url = node.base_url
                transaction.on_commit(lambda: dispatch.notify_cancel(execution_id, base_url))
    except Execution.DoesNotExist:
        raise ApiError(404, "not_found", f"No execution {execution_id!r}.", error_category="not_found") from None
    except lifecycle.InvalidTransition as exc:
        raise ApiError(
            409, "invalid_state", f"The execution is already {exc.current}.", status=exc.current
        ) from None
    return {
        "execution_id": execution.id,
        "previous_status": change.previous,
        "status": "cancelled",
        "reason": reason,
        "cancelled_at": iso(execution.completed_at),
    }
