"""The API's inputs and outputs for nodes and executions.

Input serializers validate what callers send; output serializers render what the
API answers, and their declared fields are the OpenAPI schema, so the schema is
the responses (`tests/site/test_schemathesis.py` holds them to it). Output is
rendered from the model rows directly: no extra queries, and optional keys appear
only when they have a value, as the contract writes them (`status_reason?`).
"""

import json
import re
from collections.abc import Iterable
from functools import cache
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.db.models import Func, TextField
from django.db.models.functions import Cast, Coalesce, Length
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from agentfield_site.lib import safe_http
from agentfield_site.lib.api import ApiError, DocumentSerializer
from agentfield_site.lib.timefmt import iso
from webhooks.completion import webhook_events

from .. import lifecycle
from ..models import COMPONENT_ID, STATUSES

ID_RULE = "1 to 128 letters, digits, '_' or '-'"


class StrictCharField(serializers.CharField):
    """A string, and only a string: ids that arrive as numbers are a client bug."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class ComponentSerializer(serializers.Serializer):
    """A reasoner or skill as the SDK describes it; extra keys are kept as sent."""

    id = StrictCharField(max_length=128, trim_whitespace=False)

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            raise serializers.ValidationError("Each reasoner or skill must be an object with an `id`.")
        component_id = super().to_internal_value(data)["id"]
        if not COMPONENT_ID.fullmatch(component_id):
            raise serializers.ValidationError(f"A reasoner or skill id is {ID_RULE}; got {component_id[:140]!r}.")
        return {**data, "id": component_id}


class NodeRegistrationSerializer(serializers.Serializer):
    """The SDK's AgentNode body; fields beyond these are accepted and ignored."""

    id = StrictCharField(max_length=128, trim_whitespace=False)
    # Not URLField: agents are often reached by bare service names (http://my-agent:8001).
    base_url = StrictCharField(max_length=500)
    version = serializers.CharField(max_length=64, required=False, allow_blank=True)
    reasoners = ComponentSerializer(many=True, required=False)
    skills = ComponentSerializer(many=True, required=False)
    metadata = serializers.DictField(required=False)
    instance_id = serializers.CharField(max_length=128, required=False, allow_blank=True)
    lifecycle_status = serializers.CharField(max_length=32, required=False, allow_blank=True)

    def validate_id(self, value: str) -> str:
        if not COMPONENT_ID.fullmatch(value):
            raise serializers.ValidationError(f"A node id is {ID_RULE}.")
        return value

    def validate(self, attrs: dict) -> dict:
        # Every node list carries every node's description: one key's must stay small.
        described = [attrs.get("reasoners") or [], attrs.get("skills") or [], attrs.get("metadata") or {}]
        size = len(json.dumps(described, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "replace"))
        limit = settings.NODE_MAX_DESCRIPTION_BYTES
        if size > limit:
            raise ApiError(413, "payload_too_large", f"A node's reasoners, skills and metadata hold {size} bytes "
                                                     f"of JSON; at most {limit} (NODE_MAX_DESCRIPTION_BYTES).")
        return attrs

    def validate_base_url(self, value: str) -> str:
        try:
            parts = urlsplit(value.strip())
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError:
            raise serializers.ValidationError("Must be an http or https URL.") from None
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
            raise serializers.ValidationError("Must be an http or https URL with a host and no credentials.")
        if parts.query or parts.fragment:
            raise serializers.ValidationError("Must have no query or fragment: paths are appended to it.")
        try:
            # The calls themselves are checked again when they connect (DNS may change).
            safe_http.check_url(value.strip(), settings.AGENT_ALLOWED_HOSTS)
        except safe_http.UnsafeURL as exc:
            raise serializers.ValidationError(
                f"{exc}; agents may be reached at public addresses or at AGENT_ALLOWED_HOSTS."
            ) from None
        return value.strip()


class HeartbeatSerializer(serializers.Serializer):
    status = serializers.CharField(required=False, allow_blank=True, max_length=32)
    timestamp = serializers.CharField(required=False, allow_blank=True)
    version = serializers.CharField(required=False, allow_blank=True)
    instance_id = serializers.CharField(required=False, allow_blank=True)


CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")


class HeaderField(serializers.CharField):
    """An optional request header, named in its error: `X-Run-ID is longer than 128 characters.`

    No control characters: the ids are stored, shown, and sent on to the agent as headers.
    """

    def __init__(self, header: str, max_length: int) -> None:
        self.header = header
        super().__init__(
            required=False, allow_blank=True, max_length=max_length,
            error_messages={"max_length": f"{header} is longer than {max_length} characters."},
        )

    def to_internal_value(self, data) -> str:
        value = super().to_internal_value(data)
        if CONTROL_CHARACTER.search(value):
            raise serializers.ValidationError(f"{self.header} holds a control character.")
        return value


class SubmitHeadersSerializer(serializers.Serializer):
    """The optional headers of a submission (ids of the caller's own workflow, an idempotency key)."""

    run_id = HeaderField("X-Run-ID", 128)
    parent_execution_id = HeaderField("X-Parent-Execution-ID", 128)
    session_id = HeaderField("X-Session-ID", 128)
    actor_id = HeaderField("X-Actor-ID", 128)
    idempotency_key = HeaderField("Idempotency-Key", 255)

    @classmethod
    def data_from(cls, headers) -> dict[str, str]:
        """The fields as the request's headers give them (absent: '')."""
        return {name: headers.get(header) or "" for name, header in cls.header_names().items()}

    @classmethod
    @cache
    def header_names(cls) -> dict[str, str]:
        """Field name -> header name."""
        return {name: field.header for name, field in cls._declared_fields.items()}


class WebhookSerializer(serializers.Serializer):
    """Documents the webhook object; `webhooks.completion.validate_webhook` judges it (a bad one never fails the call)."""

    url = serializers.CharField()
    secret = serializers.CharField(required=False)
    headers = serializers.DictField(child=serializers.CharField(), required=False)


@extend_schema_field(WebhookSerializer)
class AnyWebhookField(serializers.JSONField):
    """Any value: an invalid webhook is reported in `webhook_error`, it does not fail the call."""


class ObjectField(serializers.DictField):
    """A JSON object; null (or absent) is an empty one."""

    def __init__(self, **kwargs) -> None:
        super().__init__(required=False, allow_null=True, **kwargs)

    def to_internal_value(self, data) -> dict:
        if not isinstance(data, dict):
            self.fail("not_a_dict", input_type=type(data).__name__)
        return data  # kept as sent: a deep input is not walked again

    def validate_empty_values(self, data):
        if data is serializers.empty or data is None:
            return True, {}
        return super().validate_empty_values(data)


class ExecuteRequestSerializer(serializers.Serializer):
    input = ObjectField()
    context = ObjectField()
    webhook = AnyWebhookField(required=False, allow_null=True, default=None)


class StatusField(serializers.CharField):
    """A status name or one of its aliases, as the canonical status."""

    def to_internal_value(self, data) -> str:
        try:
            return lifecycle.normalize(data)
        except ValueError:
            raise serializers.ValidationError(f"Unknown status {data!r}.") from None


# What the BIGINT column holds; a larger duration_ms would fail the write (a 500).
MAX_DURATION_MS = 2**63 - 1


class LenientDurationField(serializers.JSONField):
    """The agent's duration_ms: ignored (None) when not a number or negative; refused when it cannot be stored."""

    def to_internal_value(self, data) -> int | None:
        if isinstance(data, bool) or not isinstance(data, (int, float)) or data < 0:
            return None
        if data > MAX_DURATION_MS:
            raise serializers.ValidationError(f"duration_ms must be at most {MAX_DURATION_MS}.", code="invalid_field")
        return int(data)


class StatusCallbackSerializer(serializers.Serializer):
    """The agent's status callback. Loose values agents send are tolerated, not refused.

    `error` of any type becomes text; a `status_reason` that is not text and a
    `completed_at` that is not an ISO time are ignored (the time is then now).
    """

    status = StatusField(help_text=f"One of {', '.join(STATUSES)} or an alias (completed, error, ...).")
    result = serializers.JSONField(required=False, allow_null=True)
    error = serializers.JSONField(required=False, allow_null=True)
    error_details = serializers.JSONField(required=False, allow_null=True)
    duration_ms = LenientDurationField(required=False, allow_null=True)
    completed_at = serializers.JSONField(required=False, allow_null=True)
    status_reason = serializers.JSONField(required=False, allow_null=True)

    def validate(self, attrs: dict) -> dict:
        if attrs.get("error") is not None and not isinstance(attrs["error"], str):
            attrs["error"] = str(attrs["error"])
        if "status_reason" in attrs and not isinstance(attrs["status_reason"], str):
            del attrs["status_reason"]
        return attrs


MAX_LOG_ENTRIES = 500


class LogEntriesField(serializers.ListField):
    """A list of log entries (a single object counts as one); an entry that is not an object becomes `{message}`."""

    def __init__(self, **kwargs) -> None:
        super().__init__(child=serializers.JSONField(), max_length=MAX_LOG_ENTRIES, **kwargs)
        self.error_messages["max_length"] = f"At most {MAX_LOG_ENTRIES} entries per request."

    def to_internal_value(self, data) -> list[dict]:
        if isinstance(data, dict):
            data = [data]
        if not isinstance(data, list):
            raise serializers.ValidationError("`entries` must be a list of objects.")
        if len(data) > MAX_LOG_ENTRIES:
            self.fail("max_length", max_length=MAX_LOG_ENTRIES)
        return [entry if isinstance(entry, dict) else {"message": str(entry)} for entry in data]


class LogsRequestSerializer(serializers.Serializer):
    entries = LogEntriesField()


class NoteRequestSerializer(serializers.Serializer):
    """The SDK's `app.note()`: a line for the execution's log; the execution is the `X-Execution-ID` header."""

    message = serializers.CharField(max_length=10_000, allow_blank=True, trim_whitespace=False)
    tags = serializers.ListField(child=serializers.CharField(max_length=100), max_length=50, required=False,
                                 allow_null=True)
    timestamp = serializers.FloatField(required=False, allow_null=True)
    agent_node_id = serializers.CharField(max_length=128, required=False, allow_blank=True)


class BatchStatusRequestSerializer(serializers.Serializer):
    execution_ids = serializers.ListField(
        child=serializers.CharField(max_length=128), allow_empty=False, max_length=500
    )


class CancelRequestSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, max_length=500)


# --- Output ------------------------------------------------------------------------


class NodeRegisteredSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    message = serializers.CharField()
    node_id = serializers.CharField()
    resolved_base_url = serializers.CharField()


class HeartbeatAckSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    message = serializers.CharField()
    timestamp = serializers.DateTimeField()


class SuccessSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    message = serializers.CharField(required=False)


class WorkflowEventAckSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    applied = serializers.BooleanField(help_text="Whether it moved one of this control plane's executions.")


class LogsAcceptedSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    accepted = serializers.IntegerField()


class ComponentDocSerializer(serializers.Serializer):
    """A reasoner or skill as its agent registered it: `id`, and the rest as sent."""

    id = serializers.CharField()
    input_schema = serializers.JSONField(required=False)
    output_schema = serializers.JSONField(required=False)
    tags = serializers.JSONField(required=False)


class NodeSerializer(DocumentSerializer):
    id = serializers.CharField()
    node_id = serializers.CharField()
    base_url = serializers.CharField()
    version = serializers.CharField(allow_blank=True)
    reasoners = ComponentDocSerializer(many=True)
    skills = ComponentDocSerializer(many=True)
    metadata = serializers.DictField()
    health_status = serializers.ChoiceField(choices=["active", "inactive"])
    lifecycle_status = serializers.CharField(allow_blank=True)
    last_heartbeat = serializers.DateTimeField()
    registered_at = serializers.DateTimeField()

    def document(self, node) -> dict[str, Any]:
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


class NodeListSerializer(serializers.Serializer):
    nodes = NodeSerializer(many=True)
    count = serializers.IntegerField()


class SubmissionSerializer(DocumentSerializer):
    """The 202 body of an async submission."""

    execution_id = serializers.CharField()
    run_id = serializers.CharField()
    workflow_id = serializers.CharField()
    status = serializers.ChoiceField(choices=STATUSES)
    target = serializers.CharField()
    type = serializers.ChoiceField(choices=["reasoner", "skill"])
    created_at = serializers.DateTimeField()
    enqueued_at = serializers.DateTimeField()
    webhook_registered = serializers.BooleanField()
    webhook_error = serializers.CharField(required=False, help_text="Why the webhook was refused.")

    def document(self, execution) -> dict[str, Any]:
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


class SyncResultSerializer(DocumentSerializer):
    """The sync API's 200: the execution succeeded."""

    execution_id = serializers.CharField()
    run_id = serializers.CharField()
    workflow_id = serializers.CharField()
    status = serializers.CharField(help_text='Always "succeeded".')
    result = serializers.JSONField(allow_null=True)
    duration_ms = serializers.IntegerField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    webhook_registered = serializers.BooleanField()
    webhook_error = serializers.CharField(required=False, help_text="Why the webhook was refused.")

    def document(self, execution) -> dict[str, Any]:
        doc = {
            "execution_id": execution.id,
            "run_id": execution.run_id,
            "workflow_id": execution.workflow_id,
            "status": "succeeded",
            "result": execution.result,
            "duration_ms": execution.duration_ms,
            "finished_at": iso(execution.completed_at),
            "webhook_registered": execution.webhook_registered,
        }
        if execution.webhook_error:
            doc["webhook_error"] = execution.webhook_error
        return doc


class SyncErrorSerializer(DocumentSerializer):
    """The sync API's 502 (the execution ended otherwise) and 504 (no outcome in time)."""

    error = serializers.CharField()
    message = serializers.CharField()
    error_category = serializers.CharField()
    execution_id = serializers.CharField()
    run_id = serializers.CharField()
    status = serializers.ChoiceField(choices=STATUSES)
    webhook_registered = serializers.BooleanField()
    webhook_error = serializers.CharField(required=False, help_text="Why the webhook was refused.")
    error_details = serializers.JSONField(required=False)

    def document(self, execution) -> dict[str, Any]:
        common = {
            "execution_id": execution.id,
            "run_id": execution.run_id,
            "status": execution.status,
            "webhook_registered": execution.webhook_registered,
        }
        if execution.webhook_error:
            common["webhook_error"] = execution.webhook_error
        if not execution.is_terminal:
            return {
                "error": "timeout",
                "message": f"No result within {settings.AGENT_CALL_TIMEOUT:g}s; poll the execution for its outcome.",
                "error_category": "agent_timeout",
                **common,
            }
        doc = {
            "error": f"execution_{execution.status}",
            "message": execution.error or f"The execution ended {execution.status}.",
            "error_category": execution.error_category or "agent_error",
            **common,
        }
        if execution.error_details is not None:
            doc["error_details"] = execution.error_details
        return doc


def sync_outcome(execution) -> tuple[int, dict[str, Any]]:
    """HTTP status and body of the sync API: 200 with the result, 502 failed, 504 no outcome yet."""
    if execution.status == "succeeded":
        return 200, SyncResultSerializer(execution).data
    return (502 if execution.is_terminal else 504), SyncErrorSerializer(execution).data


class WebhookEventSerializer(serializers.Serializer):
    id = serializers.CharField()
    event_type = serializers.CharField()
    status = serializers.CharField()
    http_status = serializers.IntegerField(allow_null=True)
    error_message = serializers.CharField(allow_null=True)
    created_at = serializers.DateTimeField()


class ExecutionStatusListSerializer(serializers.ListSerializer):
    """Many status documents, with their webhook events in one query."""

    def to_representation(self, data: Iterable) -> list[dict[str, Any]]:
        executions = list(data)
        registered = [e.id for e in executions if e.webhook_registered]
        events = webhook_events(registered) if registered else {}
        return [self.child.document(e, events.get(e.id, [])) for e in executions]


def document_size() -> Func:
    """About the size of an execution's status document: its result, error and error details as JSON text
    (in characters as stored: not the answer's bytes, nor its other fields).

    Each may hold a megabyte (an agent's report): answers with many documents are
    bounded by this (`API_PAGE_MAX_BYTES`), read in the database, before any row is loaded.
    """
    return (Coalesce(Length(Cast("result", TextField())), 0) + Coalesce(Length("error"), 0)
            + Coalesce(Length(Cast("error_details", TextField())), 0))


class ExecutionStatusSerializer(DocumentSerializer):
    """The status document of `GET /api/v1/executions/{id}`."""

    execution_id = serializers.CharField()
    run_id = serializers.CharField()
    workflow_id = serializers.CharField()
    parent_execution_id = serializers.CharField(required=False)
    session_id = serializers.CharField(required=False)
    actor_id = serializers.CharField(required=False)
    status = serializers.ChoiceField(choices=STATUSES)
    status_reason = serializers.CharField(required=False)
    target = serializers.CharField()
    type = serializers.ChoiceField(choices=["reasoner", "skill"])
    agent_node_id = serializers.CharField()
    reasoner_id = serializers.CharField()
    result = serializers.JSONField(required=False)
    error = serializers.CharField(required=False)
    error_category = serializers.CharField(required=False)
    error_details = serializers.JSONField(required=False)
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    completed_at = serializers.DateTimeField(required=False)
    duration_ms = serializers.IntegerField(required=False)
    webhook_registered = serializers.BooleanField()
    webhook_error = serializers.CharField(required=False, help_text="Why the webhook was refused at submission.")
    webhook_events = WebhookEventSerializer(many=True)

    class Meta:
        list_serializer_class = ExecutionStatusListSerializer

    def to_representation(self, execution) -> dict[str, Any]:
        events = webhook_events([execution.id]).get(execution.id, []) if execution.webhook_registered else []
        return self.document(execution, events)

    def document(self, execution, events: list[dict] | None = None) -> dict[str, Any]:
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
        for name in ("parent_execution_id", "session_id", "actor_id", "status_reason", "error",
                     "error_category", "webhook_error"):
            value = getattr(execution, name)
            if value:
                doc[name] = value
        for name in ("result", "error_details", "duration_ms"):
            value = getattr(execution, name)
            if value is not None:
                doc[name] = value
        if execution.completed_at:
            doc["completed_at"] = iso(execution.completed_at)
        return doc


class CancelledSerializer(serializers.Serializer):
    execution_id = serializers.CharField()
    previous_status = serializers.ChoiceField(choices=STATUSES)
    status = serializers.CharField(help_text='Always "cancelled".')
    reason = serializers.CharField()
    cancelled_at = serializers.DateTimeField()
