"""Thin views over the subscription and delivery services."""

import django_filters
from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from agentfield_site.auth import CLIENT, caller_of
from agentfield_site.lib.api import ApiError, int_param, object_body

from .. import delivery, destinations, subscriptions
from ..models import Delivery, Subscription
from ..ownership import deliveries_of, subscriptions_of
from .serializers import (
    DeliveryDeadLetterPageSerializer,
    DestinationListSerializer,
    RedriveResultSerializer,
    RedriveSerializer,
    RetryQueuedSerializer,
    RotatedSecretSerializer,
    SubscriptionCreatedSerializer,
    SubscriptionSerializer,
    TestQueuedSerializer,
)

DLQ_MAX_LIMIT = 500


class SubscriptionFilter(django_filters.FilterSet):
    # Strict: django-filter's boolean filter reads a value it cannot parse as no filter at all.
    enabled = django_filters.CharFilter(method="filter_enabled", help_text="true or false.")

    class Meta:
        model = Subscription
        fields = ["enabled"]

    def filter_enabled(self, queryset, name: str, value: str):
        choice = {"true": True, "1": True, "false": False, "0": False}.get(value.strip().lower())
        if choice is None:
            raise exceptions.ValidationError({"enabled": f"{value[:40]!r} is not true or false."})
        return queryset.filter(enabled=choice)


class SubscriptionViewSet(viewsets.ModelViewSet):
    """CRUD for standing webhook endpoints; the secret is shown on create and rotate only."""

    scopes = (CLIENT,)
    serializer_class = SubscriptionSerializer
    filterset_class = SubscriptionFilter

    def get_queryset(self):
        return subscriptions_of(caller_of(self.request)).order_by("created_at")

    @extend_schema(responses={201: SubscriptionCreatedSerializer})
    def create(self, request: Request, *args, **kwargs) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        owner_id = caller_of(request).key_id
        limit = settings.WEBHOOK_MAX_SUBSCRIPTIONS_PER_KEY
        # Every event is matched against every enabled subscription while it is
        # published: one key must not make that cost grow without bound for all.
        if owner_id is not None and Subscription.objects.filter(owner_id=owner_id).count() >= limit:
            raise ApiError(409, "conflict", f"This key already has {limit} subscriptions, the most one key may hold "
                           "(WEBHOOK_MAX_SUBSCRIPTIONS_PER_KEY); delete one first.")
        sub, secret = subscriptions.create(
            url=data["url"],
            description=data.get("description", ""),
            event_types=data["event_types"],
            headers=data.get("headers", {}),
            enabled=data.get("enabled", True),
            owner_id=owner_id,
        )
        created = SubscriptionCreatedSerializer(sub, context={"secret": secret})
        return Response(created.data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={200: RotatedSecretSerializer})
    @action(detail=True, methods=["post"], url_path="rotate-secret")
    def rotate_secret(self, request: Request, pk: str | None = None) -> Response:
        """A new secret, shown once; the previous one keeps signing for 24 hours."""
        object_body(request)  # none is read, but a body that is not a JSON object is refused
        sub = self.get_object()
        secret = subscriptions.rotate_secret(sub)
        rotated = {"id": sub.id, "secret": secret, "previous_secret_valid_for_seconds": 86400}
        return Response(RotatedSecretSerializer(rotated).data)

    @extend_schema(request=None, responses={202: TestQueuedSerializer})
    @action(detail=True, methods=["post"])
    def test(self, request: Request, pk: str | None = None) -> Response:
        """Send one `webhook.test` event (no retries)."""
        object_body(request)
        row = subscriptions.send_test(self.get_object())
        queued = {"status": "queued", "delivery_id": row.id, "webhook_id": row.webhook_id}
        return Response(TestQueuedSerializer(queued).data, status=status.HTTP_202_ACCEPTED)


def _dead_letters(request: Request, params) -> QuerySet:
    rows = deliveries_of(caller_of(request)).filter(status=Delivery.Status.DEAD)
    if params.get("execution_id"):
        rows = rows.filter(execution_id=params["execution_id"])
    if params.get("subscription"):
        rows = rows.filter(subscription_id=params["subscription"])
    if params.get("event"):
        rows = rows.filter(event_type=params["event"])
    return rows


class DeadLetterListView(APIView):
    """Dead-lettered deliveries, oldest first."""

    scopes = (CLIENT,)

    @extend_schema(responses={200: DeliveryDeadLetterPageSerializer})
    def get(self, request: Request) -> Response:
        limit = int_param(request, "limit", 50, DLQ_MAX_LIMIT)
        offset = int_param(request, "offset", 0, 2**31)
        rows = _dead_letters(request, request.query_params).select_related("subscription").order_by("dead_lettered_at", "id")
        page = {"entries": rows[offset : offset + limit], "total_count": rows.count()}
        return Response(DeliveryDeadLetterPageSerializer(page).data)


class RedriveView(APIView):
    """Send dead-lettered deliveries again: fresh retry budget, same webhook-id."""

    scopes = (CLIENT,)

    @extend_schema(request=RedriveSerializer, responses={200: RedriveResultSerializer})
    def post(self, request: Request) -> Response:
        serializer = RedriveSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        rows = _dead_letters(request, data.get("filter") or {})
        if data.get("ids"):
            rows = rows.filter(id__in=data["ids"])
        # The caller's dead letters it named: an id of another key's, or of none, is not one of them.
        processed = rows.count()
        queued = delivery.redrive(rows)
        return Response(RedriveResultSerializer({"success": True, "processed": processed, "queued": queued}).data)


class ExecutionWebhookRetryView(APIView):
    """Send an execution's completion webhook again, whatever became of it."""

    scopes = (CLIENT,)

    @extend_schema(request=None, responses={202: RetryQueuedSerializer})
    def post(self, request: Request, execution_id: str) -> Response:
        object_body(request)
        with transaction.atomic():
            row = deliveries_of(caller_of(request)).filter(
                kind=Delivery.Kind.COMPLETION, execution_id=execution_id
            ).first()
            if row is None:
                raise ApiError(404, "not_found", f"Execution {execution_id} has no completion webhook.")
            delivery.redrive(
                Delivery.objects.filter(id=row.id),
                statuses=(Delivery.Status.DEAD, Delivery.Status.FAILED, Delivery.Status.DELIVERED),
            )
        queued = {"status": "queued", "execution_id": execution_id, "webhook_id": row.webhook_id}
        return Response(RetryQueuedSerializer(queued).data, status=status.HTTP_202_ACCEPTED)


class DestinationListView(APIView):
    """Every receiver address with its circuit breaker state and queue."""

    @extend_schema(responses={200: DestinationListSerializer})
    def get(self, request: Request) -> Response:
        return Response(DestinationListSerializer({"results": destinations.overview()}).data)
