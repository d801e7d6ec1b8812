"""`/api/v1/settings/observability-webhook`: the collector configuration, status and dead letters.

Thin views: serializers validate the input (with `observability.forwarder`'s
rules, which the admin shares) and render the answers.
"""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from agentfield_site.lib.api import (
    DocumentSerializer,
    ErrorSerializer,
    int_param,
    object_body,
    validated,
)

from ..forwarder import configuration, dead_letters
from ..models import ForwarderConfig, ForwarderDeadLetter

DEFAULT_PAGE = 50
MAX_PAGE = 1000


class CheckedField(serializers.Field):
    """A value judged by one of `forwarder`'s validators (the admin's form uses the same)."""

    check = staticmethod(lambda value: value)

    def to_internal_value(self, data):
        try:
            return self.check(data)
        except configuration.ConfigError as exc:
            raise serializers.ValidationError(str(exc)) from None


@extend_schema_field(OpenApiTypes.URI)
class CollectorURLField(CheckedField):
    check = staticmethod(configuration.validate_url)


@extend_schema_field(OpenApiTypes.STR)
class SecretField(CheckedField):
    check = staticmethod(configuration.validate_secret)


@extend_schema_field({"type": "object", "additionalProperties": {"type": "string"}})
class HeadersField(CheckedField):
    check = staticmethod(configuration.validate_headers)


@extend_schema_field({"type": "array", "items": {"type": "string"}})
class EventTypesField(CheckedField):
    check = staticmethod(configuration.validate_event_types)


class StrictBooleanField(serializers.BooleanField):
    """true or false, not DRF's "yes", "on" or 1."""

    def to_internal_value(self, data) -> bool:
        if not isinstance(data, bool):
            raise serializers.ValidationError("enabled must be true or false.")
        return data


class ConfigInput(serializers.Serializer):
    url = CollectorURLField(error_messages={"required": "url is required.", "null": "url is required."})
    secret = SecretField(
        required=False, allow_null=True, help_text="Omitted (or null): keep the stored secret. Empty: remove it."
    )
    headers = HeadersField(required=False, allow_null=True)
    enabled = StrictBooleanField(default=True)
    event_types = EventTypesField(required=False, allow_null=True, help_text="Default: all.")

    def validate(self, attrs: dict) -> dict:
        unknown = sorted(set(self.initial_data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError(f"Unknown fields: {', '.join(unknown)}.")
        try:
            configuration.check_masked(attrs.get("headers") or {})
        except configuration.ConfigError as exc:
            raise serializers.ValidationError({"headers": [str(exc)]}) from None
        return {
            "url": attrs["url"],
            "secret": attrs.get("secret"),
            "headers": attrs.get("headers") or {},
            "enabled": attrs["enabled"],
            "event_types": attrs.get("event_types") or configuration.validate_event_types(None),
        }


class ConfigDocument(DocumentSerializer):
    url = serializers.URLField()
    has_secret = serializers.BooleanField()
    headers = serializers.DictField(child=serializers.CharField())
    enabled = serializers.BooleanField()
    event_types = serializers.ListField(child=serializers.CharField())
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()

    def document(self, config: ForwarderConfig) -> dict:
        return configuration.config_document(config)


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


class ClearedDocument(MessageDocument):
    removed = serializers.IntegerField()


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


class DeadLetterDocument(DocumentSerializer):
    id = serializers.IntegerField()
    event_id = serializers.IntegerField()
    event_type = serializers.CharField()
    event_source = serializers.CharField()
    event_timestamp = serializers.DateTimeField()
    payload = serializers.JSONField()
    error_message = serializers.CharField(allow_blank=True)
    retry_count = serializers.IntegerField()
    created_at = serializers.DateTimeField()

    def document(self, row: ForwarderDeadLetter) -> dict:
        return row.as_entry()


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
        return Response({"configured": True, "config": ConfigDocument(config).data})

    @extend_schema(
        summary="Create or replace the observability webhook; an omitted secret is kept",
        request=ConfigInput,
        responses=SavedDocument,
    )
    def post(self, request: Request) -> Response:
        config = configuration.configure(**validated(ConfigInput, object_body(request)))
        return Response(
            {"success": True, "message": "Observability webhook saved.", "config": ConfigDocument(config).data}
        )

    @extend_schema(
        summary="Remove the observability webhook; forwarding stops", responses={200: MessageDocument}
    )
    def delete(self, request: Request) -> Response:
        object_body(request)  # no body, or `{}`: a malformed one is a 400 before anything is removed
        if configuration.unconfigure():
            return Response({"success": True, "message": "Observability webhook removed."})
        return Response({"success": True, "message": "No observability webhook was configured."})


class ObservabilityStatusView(APIView):
    @extend_schema(
        summary="Forwarder status: backlog, counters, last error", responses=StatusDocument
    )
    def get(self, request: Request) -> Response:
        return Response(StatusDocument(configuration.status()).data)


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
                "entries": DeadLetterDocument(rows, many=True).data,
                "total_count": ForwarderDeadLetter.objects.count(),
                "limit": limit,
                "offset": offset,
            }
        )

    @extend_schema(summary="Clear the dead letter queue", responses={200: ClearedDocument})
    def delete(self, request: Request) -> Response:
        object_body(request)
        removed = dead_letters.clear()
        return Response({"success": True, "message": f"Removed {removed} dead letters.", "removed": removed})


class ObservabilityRedriveView(APIView):
    @extend_schema(
        summary="Send every dead letter again; delivered ones leave the queue",
        request=None,
        responses={200: RedriveDocument, 409: ErrorSerializer},
    )
    def post(self, request: Request) -> Response:
        object_body(request)
        return Response(RedriveDocument(dead_letters.redrive()).data)
