"""The execution state machine: the one place where an execution's status changes.

Every change is a compare-and-set on the old status, and its `execution.*` event is
published in the same transaction, so the event exists if and only if the change
does. A change to a terminal status also hands the completion webhook (when one is
registered) to `webhooks.completion` inside that transaction.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from agentfield_site.lib.timefmt import iso
from observability.events import publish
from webhooks.completion import enqueue_completion

from .errors import InvalidTransition
from .models import STATUSES, TERMINAL, Execution

ALIASES = {
    "completed": "succeeded",
    "success": "succeeded",
    "ok": "succeeded",
    "done": "succeeded",
    "error": "failed",
    "failure": "failed",
    "canceled": "cancelled",
    "timed_out": "timeout",
    "in_progress": "running",
    "processing": "running",
}

ALLOWED = {
    "pending": {"queued", "running", "cancelled"},
    "queued": {"running", "cancelled"},
    "waiting": {"running", "cancelled", "failed"},
    "running": {"waiting", "paused", "succeeded", "failed", "cancelled", "timeout"},
    "paused": {"running", "cancelled"},
}

EVENT_FOR_TERMINAL = {
    "succeeded": "execution.completed",
    "failed": "execution.failed",
    "cancelled": "execution.cancelled",
    "timeout": "execution.timeout",
}

_UNSET: Any = object()


def normalize(status: object) -> str:
    """The canonical status for a name or alias; ValueError when unknown."""
    value = str(status or "").strip().lower()
    value = ALIASES.get(value, value)
    if value not in STATUSES:
        raise ValueError(f"Unknown status {status!r}.")
    return value


def can_change(current: str, requested: str, *, system: bool = False) -> bool:
    """Whether `requested` may follow `current`.

    `system` is the platform's own stale-execution timeout, which applies to every
    non-terminal status: an execution stuck in `queued` must end too.
    """
    if current in TERMINAL:
        return False
    if system and requested == "timeout":
        return True
    return requested in ALLOWED.get(current, set())


@dataclass
class Change:
    execution: Execution
    previous: str
    changed: bool


# As much of an execution's `error` as its progress events carry (as `status_reason`, at most 500).
PROGRESS_ERROR_CHARS = 500


def event_data(execution: Execution, *, outcome: bool = True) -> dict[str, Any]:
    """The `data` of an execution event.

    The outcome (`result`, `error`, up to a body's size each) goes whole on the
    event that ends the execution only: a progress event carries the `error` cut
    to PROGRESS_ERROR_CHARS (what live views show meanwhile), a log entry's event
    (`outcome=False`) neither. Copied into each of those, one stored value became
    as many events of its size, for the log, the streams' replays, subscriptions
    and the forwarder to carry: 500 log entries after a 1 MB result were half a
    gigabyte from one 10 KB request, and each pause or resume after a 1 MB `error`
    1 MB more.
    """
    data: dict[str, Any] = {
        "target": execution.target,
        "type": execution.type,
        "reasoner_id": execution.reasoner_id,
        "run_id": execution.run_id,
        "duration_ms": execution.duration_ms,
    }
    if execution.error and outcome:
        data["error"] = execution.error if execution.is_terminal else execution.error[:PROGRESS_ERROR_CHARS]
    if execution.webhook_registered:
        data["webhook_registered"] = True
    if execution.webhook_error:
        # A webhook refused at submission: live views show it as refused, not as none.
        data["webhook_error"] = execution.webhook_error
    if execution.status_reason:
        data["status_reason"] = execution.status_reason
    if execution.is_terminal and outcome:
        data["result"] = execution.result
        if execution.error_category:
            data["error_category"] = execution.error_category
    return data


def _publish(event_type: str, execution: Execution) -> None:
    publish(
        event_type,
        execution_id=execution.id,
        workflow_id=execution.workflow_id,
        agent_node_id=execution.agent_node_id,
        status=execution.status,
        data=event_data(execution),
    )


def record_created(execution: Execution) -> Execution:
    """Save a new execution with its `execution.created` event, atomically."""
    # No savepoint inside the submit's transaction: a failure here fails it all anyway.
    with transaction.atomic(savepoint=False):
        execution.save(force_insert=True)
        _publish("execution.created", execution)
    return execution


def completion_payload(execution: Execution) -> dict[str, Any]:
    """The contract's completion webhook body for a terminal execution."""
    payload: dict[str, Any] = {
        "event": "execution.completed" if execution.status == "succeeded" else "execution.failed",
        "execution_id": execution.id,
        "workflow_id": execution.workflow_id,
        "run_id": execution.run_id,
        "agent_node_id": execution.agent_node_id,
        "reasoner_id": execution.reasoner_id,
        "status": execution.status,
        "target": execution.target,
        "type": execution.type,
        "started_at": iso(execution.started_at),
        "completed_at": iso(execution.completed_at),
        "duration_ms": execution.duration_ms,
        "timestamp": iso(timezone.now()),
    }
    if execution.status_reason:
        payload["status_reason"] = execution.status_reason
    if execution.status == "succeeded":
        payload["result"] = execution.result
    else:
        payload["error_message"] = execution.error or execution.status_reason or execution.status
    if execution.error_category:
        payload["error_category"] = execution.error_category
    return payload


def _completed_at(value: object, now: datetime) -> datetime:
    """The agent's completion time when it is a sane ISO time, else now."""
    if isinstance(value, str):
        try:
            parsed = parse_datetime(value)
        except ValueError:
            parsed = None
        if parsed is not None:
            if timezone.is_naive(parsed):
                parsed = timezone.make_aware(parsed, UTC)
            # An agent clock far off must not produce negative or absurd durations.
            if abs((parsed - now).total_seconds()) < 300:
                return parsed
    return now


def transition(
    execution_id: str,
    to: str,
    *,
    system: bool = False,
    result: Any = _UNSET,
    error: str | None = None,
    error_category: str = "",
    error_details: Any = _UNSET,
    status_reason: str | None = None,
    duration_ms: int | None = None,
    completed_at: object = None,
    ending_call: str = "",
) -> Change:
    """Move an execution to `to` (a canonical status), publishing its event.

    The same status again is a no-op (`changed=False`): a repeated terminal callback
    or a second `running` report publishes nothing and sends no second webhook.
    `ending_call` is the dispatch token of the call whose outcome this is.
    Raises `InvalidTransition` and `Execution.DoesNotExist`.
    """
    with transaction.atomic():
        # A concurrent writer can move the row between our read and our conditional
        # update; re-read and decide again rather than overwrite its change.
        for _ in range(5):
            row = Execution.objects.get(pk=execution_id)
            current = row.status
            if current == to:
                return Change(row, current, False)
            if not can_change(current, to, system=system):
                raise InvalidTransition(current, to)
            now = timezone.now()
            fields: dict[str, Any] = {"status": to, "updated_at": now}
            if to == "running" and row.started_at is None:
                fields["started_at"] = now
            if status_reason is not None:
                fields["status_reason"] = status_reason[:500]
            if error is not None:
                fields["error"] = error
            if error_category:
                fields["error_category"] = error_category
            if error_details is not _UNSET:
                fields["error_details"] = error_details
            if result is not _UNSET:
                fields["result"] = result
            if to in TERMINAL:
                done_at = _completed_at(completed_at, now)
                started = row.started_at or row.created_at
                fields["completed_at"] = done_at
                if duration_ms is None:
                    duration_ms = max(0, int((done_at - started) / timedelta(milliseconds=1)))
                fields["duration_ms"] = duration_ms
                # Nothing is left to dispatch once an outcome is known.
                fields["dispatch_state"] = Execution.Dispatch.DONE
                # A call still going (ended here by a cancel, the agent's callback, the
                # expiry) keeps its lease until it returns: it holds a call thread, and
                # counts against its node's and key's caps till then (dispatch.calls_in_flight).
                if row.dispatch_state != Execution.Dispatch.IN_FLIGHT or row.dispatch_token == ending_call:
                    fields["dispatch_lease_until"] = None
            if Execution.objects.filter(pk=execution_id, status=current).update(**fields) != 1:
                continue
            for name, value in fields.items():
                setattr(row, name, value)
            _publish(_event_type(current, to), row)
            if to in TERMINAL and row.webhook_registered:
                enqueue_completion(
                    execution_id=row.id,
                    url=row.webhook_url,
                    secret=row.webhook_secret,
                    headers=row.webhook_headers or {},
                    payload=completion_payload(row),
                    owner_id=row.owner_id,
                )
            return Change(row, current, True)
    raise InvalidTransition(current, to)


def _event_type(current: str, to: str) -> str:
    if to in TERMINAL:
        return EVENT_FOR_TERMINAL[to]
    if to == "running" and current in ("pending", "queued"):
        return "execution.started"
    return "execution.updated"
