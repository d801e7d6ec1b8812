"""`/api/v1/settings/observability-webhook`: the collector configuration, status and dead letters.

Thin views: they validate input and call `observability.forwarder`.
"""

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from agentfield_site.lib.api import ApiError, int_param, object_body

from ..forwarder import configuration, dead_letters
from ..models import ForwarderConfig, ForwarderDeadLetter

DEFAULT_PAGE = 50
MAX_PAGE = 1000


# Serializers document the wire shapes for OpenAPI; validation lives in
# `observability.forwarder`, shared with the admin.
class ConfigInput(serializers.Serializer):
    url = serializers.URLField()
    secret = serializers.CharField(
        required=False, help_text="Omitted: keep the stored secret. Empty: remove it."
    )
    headers = serializers.DictField(child=serializers.CharField(), required=False)
    enabled = serializers.BooleanField(default=True)
    event_types = serializers.ListField(
        child=serializers.CharField(), required=False, help_text="Default: all."
    )


class ConfigDocument(serializers.Serializer):
    url = serializers.URLField()
    has_secret = serializers.BooleanField()
    headers = serializers.DictField(child=serializers.CharField())
    enabled = serializers.BooleanField()
    event_types = serializers.ListField(child=serializers.CharField())
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class SettingsDocument(serializers.Serializer):
    configured = serializers.BooleanField()
    config = ConfigDocument(required=False)


class SavedDocument(serializers.Serializer):
    success = serializers.BooleanField()
    message = serializers.CharField()
    config = ConfigDocument()


class MessageDocument(serializers.Serializer):
    success = serializers.BooleanField()
    message = serializers.CharField()


class StatusDocument(serializers.Serializer):
    enabled = serializers.BooleanField()
    webhook_url = serializers.URLField(allow_null=True)
    backlog = serializers.IntegerField()
    cursor = serializers.IntegerField()
    events_forwarded = serializers.IntegerField()
    dead_letter_count = serializers.IntegerField()
    last_forwarded_at = serializers.DateTimeField(allow_null=True)
    last_error = serializers.CharField(allow_null=True)
    last_error_at = serializers.DateTimeField(allow_null=True)


class DeadLetterDocument(serializers.Serializer):
    id = serializers.IntegerField()
    event_id = serializers.IntegerField()
    event_type = serializers.CharField()
    event_source = serializers.CharField()
    event_timestamp = serializers.DateTimeField()
    payload = serializers.DictField()
    error_message = serializers.CharField()
    retry_count = serializers.IntegerField()
    created_at = serializers.DateTimeField()


class DeadLetterPage(serializers.Serializer):
    entries = DeadLetterDocument(many=True)
    total_count = serializers.IntegerField()
    limit = serializers.IntegerField()
    offset = serializers.IntegerField()


class RedriveDocument(serializers.Serializer):
    success = serializers.BooleanField()
    message = serializers.CharField()
    processed = serializers.IntegerField(help_text="Dead letters sent again.")
    failed = serializers.IntegerField(help_text="Of those, still failing (they stay in the queue).")


class ObservabilityWebhookView(APIView):
    """The one collector configuration."""

    @extend_schema(
        summary="The observability webhook configuration (never the secret)",
        responses=SettingsDocument,
    )
    def get(self, request: Request) -> Response:
        config = ForwarderConfig.current()
        if config is None:
            return Response({"configured": False})
        return Response({"configured": True, "config": configuration.config_document(config)})

    @extend_schema(
        summary="Create or replace the observability webhook; an omitted secret is kept",
        request=ConfigInput,
        responses=SavedDocument,
    )
    def post(self, request: Request) -> Response:
        data = object_body(request)
        unknown = sorted(set(data) - {"url", "secret", "headers", "enabled", "event_types"})
        if unknown:
            raise ApiError(400, "bad_request", f"Unknown fields: {', '.join(unknown)}.")
        enabled = data.get("enabled", True)
        if not isinstance(enabled, bool):
            raise ApiError(400, "bad_request", "enabled must be true or false.")
        try:
            config = configuration.configure(
                url=configuration.validate_url(data.get("url")),
                secret=configuration.validate_secret(data.get("secret")),
                headers=configuration.validate_headers(data.get("headers")),
                enabled=enabled,
                event_types=configuration.validate_event_types(data.get("event_types")),
            )
        except configuration.ConfigError as exc:
            raise ApiError(400, "bad_request", str(exc)) from None
        return Response(
            {
                "success": True,
                "message": "Observability webhook saved.",
                "config": configuration.config_document(config),
            }
        )

    @extend_schema(
        summary="Remove the observability webhook; forwarding stops", responses=MessageDocument
    )
    def delete(self, request: Request) -> Response:
        if configuration.unconfigure():
            return Response({"success": True, "message": "Observability webhook removed."})
        return Response({"success": True, "message": "No observability webhook was configured."})


class ObservabilityStatusView(APIView):
    @extend_schema(
        summary="Forwarder status: backlog, counters, last error", responses=StatusDocument
    )
    def get(self, request: Request) -> Response:
        return Response(configuration.status())


class ObservabilityDeadLettersView(APIView):
    """Events the collector did not take, oldest first."""

    @extend_schema(
        summary="List dead-lettered events, oldest first",
        parameters=[
            OpenApiParameter(
                "limit", int, description=f"Default {DEFAULT_PAGE}, at most {MAX_PAGE}."
            ),
            OpenApiParameter("offset", int),
        ],
        responses=DeadLetterPage,
    )
    def get(self, request: Request) -> Response:
        limit = int_param(request, "limit", DEFAULT_PAGE, MAX_PAGE)
        offset = int_param(request, "offset", 0, 2**31)
        rows = ForwarderDeadLetter.objects.order_by("id")[offset : offset + limit]
        return Response(
            {
                "entries": [row.as_entry() for row in rows],
                "total_count": ForwarderDeadLetter.objects.count(),
                "limit": limit,
                "offset": offset,
            }
        )

    @extend_schema(summary="Clear the dead letter queue", responses=MessageDocument)
    def delete(self, request: Request) -> Response:
        removed = dead_letters.clear()
        return Response(
            {"success": True, "message": f"Removed {removed} dead letters.", "removed": removed}
        )


class ObservabilityRedriveView(APIView):
    @extend_schema(
        summary="Send every dead letter again; delivered ones leave the queue",
        request=None,
        responses=RedriveDocument,
    )
    def post(self, request: Request) -> Response:
        try:
            return Response(dead_letters.redrive())
        except dead_letters.NotConfigured as exc:
            raise ApiError(409, "not_configured", str(exc)) from None
