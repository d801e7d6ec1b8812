"""The JSON documents the API returns for executions and nodes (contract shapes)."""

from collections.abc import Iterable, Sequence
from typing import Any

from django.conf import settings

from agentfield_site.lib.timefmt import iso
from webhooks.completion import webhook_events


def submission_document(execution) -> dict[str, Any]:
    """The 202 body of an async submission."""
    doc = {
        "execution_id": execution.id,
        "run_id": execution.run_id,
        "workflow_id": execution.workflow_id,
        "status": "queued" if execution.status in ("pending", "queued") else execution.status,
        "target": execution.target,
        "type": execution.type,
        "created_at": iso(execution.created_at),
        "enqueued_at": iso(execution.enqueued_at),
        "webhook_registered": execution.webhook_registered,
    }
    if execution.webhook_error:
        doc["webhook_error"] = execution.webhook_error
    return doc


def status_document(execution, events: list[dict] | None = None) -> dict[str, Any]:
    """The status document of `GET /api/v1/executions/{id}`."""
    doc: dict[str, Any] = {
        "execution_id": execution.id,
        "run_id": execution.run_id,
        "workflow_id": execution.workflow_id,
        "status": execution.status,
        "target": execution.target,
        "type": execution.type,
        "agent_node_id": execution.agent_node_id,
        "reasoner_id": execution.reasoner_id,
        "created_at": iso(execution.created_at),
        "started_at": iso(execution.started_at),
        "webhook_registered": execution.webhook_registered,
        "webhook_events": events if events is not None else [],
    }
    if execution.parent_execution_id:
        doc["parent_execution_id"] = execution.parent_execution_id
    if execution.session_id:
        doc["session_id"] = execution.session_id
    if execution.actor_id:
        doc["actor_id"] = execution.actor_id
    if execution.status_reason:
        doc["status_reason"] = execution.status_reason
    if execution.result is not None:
        doc["result"] = execution.result
    if execution.error:
        doc["error"] = execution.error
    if execution.error_category:
        doc["error_category"] = execution.error_category
    if execution.error_details is not None:
        doc["error_details"] = execution.error_details
    if execution.completed_at:
        doc["completed_at"] = iso(execution.completed_at)
    if execution.duration_ms is not None:
        doc["duration_ms"] = execution.duration_ms
    if execution.webhook_error:
        doc["webhook_error"] = execution.webhook_error
    return doc


def sync_outcome(execution) -> tuple[int, dict[str, Any]]:
    """HTTP status and body of the sync API: 200 with the result, 502 failed, 504 no outcome yet."""
    if execution.status == "succeeded":
        return 200, {
            "execution_id": execution.id,
            "run_id": execution.run_id,
            "workflow_id": execution.workflow_id,
            "status": "succeeded",
            "result": execution.result,
            "duration_ms": execution.duration_ms,
            "finished_at": iso(execution.completed_at),
            "webhook_registered": execution.webhook_registered,
        }
    common = {
        "execution_id": execution.id,
        "run_id": execution.run_id,
        "status": execution.status,
        "webhook_registered": execution.webhook_registered,
    }
    if execution.is_terminal:
        body = {
            "error": f"execution_{execution.status}",
            "message": execution.error or f"The execution ended {execution.status}.",
            "error_category": execution.error_category or "agent_error",
            **common,
        }
        if execution.error_details is not None:
            body["error_details"] = execution.error_details
        return 502, body
    return 504, {
        "error": "timeout",
        "message": f"No result within {settings.AGENT_CALL_TIMEOUT:g}s; poll the execution for its outcome.",
        "error_category": "agent_timeout",
        **common,
    }


def status_documents(executions: Iterable) -> list[dict[str, Any]]:
    """Status documents for many executions with their webhook events in one query."""
    executions = list(executions)
    events = webhook_events([e.id for e in executions if e.webhook_registered]) if executions else {}
    return [status_document(e, events.get(e.id, [])) for e in executions]


def node_document(node) -> dict[str, Any]:
    return {
        "id": node.id,
        "node_id": node.id,
        "base_url": node.base_url,
        "version": node.version,
        "reasoners": node.reasoners,
        "skills": node.skills,
        "metadata": node.metadata,
        "health_status": node.health_status,
        "lifecycle_status": node.lifecycle_status,
        "last_heartbeat": iso(node.last_heartbeat),
        "registered_at": iso(node.registered_at),
    }


def node_documents(nodes: Sequence) -> list[dict[str, Any]]:
    return [node_document(n) for n in nodes]
