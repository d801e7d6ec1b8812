"""Request validation and response shapes (the latter drive the OpenAPI schema)."""

from urllib.parse import urlsplit

from django.conf import settings
from rest_framework import serializers

from agentfield_site.lib import safe_http

from ..models import COMPONENT_ID

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


class NodeRegisteredSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    message = serializers.CharField()
    node_id = serializers.CharField()
    resolved_base_url = serializers.CharField()


class HeartbeatSerializer(serializers.Serializer):
    status = serializers.CharField(required=False, allow_blank=True, max_length=32)
    timestamp = serializers.CharField(required=False, allow_blank=True)
    version = serializers.CharField(required=False, allow_blank=True)
    instance_id = serializers.CharField(required=False, allow_blank=True)


class SuccessSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    message = serializers.CharField(required=False)


class ComponentDocSerializer(serializers.Serializer):
    id = serializers.CharField()
    input_schema = serializers.DictField(required=False)
    output_schema = serializers.DictField(required=False)
    tags = serializers.ListField(child=serializers.CharField(), required=False)


class NodeSerializer(serializers.Serializer):
    id = serializers.CharField()
    node_id = serializers.CharField()
    base_url = serializers.CharField()
    version = serializers.CharField()
    reasoners = ComponentDocSerializer(many=True)
    skills = ComponentDocSerializer(many=True)
    metadata = serializers.DictField()
    health_status = serializers.ChoiceField(choices=["active", "inactive"])
    lifecycle_status = serializers.CharField()
    last_heartbeat = serializers.DateTimeField()
    registered_at = serializers.DateTimeField()


class NodeListSerializer(serializers.Serializer):
    nodes = NodeSerializer(many=True)
    count = serializers.IntegerField()


class WebhookSerializer(serializers.Serializer):
    url = serializers.CharField()
    secret = serializers.CharField(required=False)
    headers = serializers.DictField(child=serializers.CharField(), required=False)


class ExecuteRequestSerializer(serializers.Serializer):
    """Documents the body; validation is in `executions.submission` (it must never 500)."""

    input = serializers.DictField(required=False, default=dict)
    context = serializers.DictField(required=False)
    webhook = WebhookSerializer(required=False)


class SubmissionSerializer(serializers.Serializer):
    execution_id = serializers.CharField()
    run_id = serializers.CharField()
    workflow_id = serializers.CharField()
    status = serializers.CharField()
    target = serializers.CharField()
    type = serializers.ChoiceField(choices=["reasoner", "skill"])
    created_at = serializers.DateTimeField()
    enqueued_at = serializers.DateTimeField()
    webhook_registered = serializers.BooleanField()
    webhook_error = serializers.CharField(required=False)


class SyncResultSerializer(serializers.Serializer):
    execution_id = serializers.CharField()
    run_id = serializers.CharField()
    status = serializers.CharField()
    result = serializers.JSONField()
    duration_ms = serializers.IntegerField()
    finished_at = serializers.DateTimeField()
    webhook_registered = serializers.BooleanField()


class WebhookEventSerializer(serializers.Serializer):
    id = serializers.CharField()
    event_type = serializers.CharField()
    status = serializers.CharField()
    http_status = serializers.IntegerField(allow_null=True)
    error_message = serializers.CharField(allow_null=True)
    created_at = serializers.DateTimeField()


class ExecutionStatusSerializer(serializers.Serializer):
    execution_id = serializers.CharField()
    run_id = serializers.CharField()
    workflow_id = serializers.CharField()
    status = serializers.CharField()
    status_reason = serializers.CharField(required=False)
    target = serializers.CharField()
    type = serializers.CharField()
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
    webhook_events = WebhookEventSerializer(many=True)


class BatchStatusRequestSerializer(serializers.Serializer):
    execution_ids = serializers.ListField(
        child=serializers.CharField(max_length=128), allow_empty=False, max_length=500
    )


class StatusCallbackSerializer(serializers.Serializer):
    """Documents the agent's status callback; `executions.reports` validates it."""

    status = serializers.CharField()
    result = serializers.JSONField(required=False)
    error = serializers.CharField(required=False)
    error_details = serializers.JSONField(required=False)
    duration_ms = serializers.IntegerField(required=False)
    completed_at = serializers.DateTimeField(required=False)
    status_reason = serializers.CharField(required=False)


class LogsRequestSerializer(serializers.Serializer):
    entries = serializers.ListField(child=serializers.DictField())


class CancelRequestSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, max_length=500)


class CancelledSerializer(serializers.Serializer):
    execution_id = serializers.CharField()
    previous_status = serializers.CharField()
    status = serializers.CharField()
    reason = serializers.CharField()
    cancelled_at = serializers.DateTimeField()


class ErrorSerializer(serializers.Serializer):
    error = serializers.CharField()
    message = serializers.CharField()
    error_category = serializers.CharField(required=False)
