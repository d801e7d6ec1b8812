"""The operations console for deliveries: what happened, attempt by attempt, and redrive."""

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from agentfield_site.escaped_admin import EscapedJSONAdmin

from . import delivery, destinations
from .masking import masked_headers
from .models import Attempt, DeadLetter, Delivery, Destination, Subscription, SubscriptionSecret


class AttemptInline(admin.TabularInline):
    model = Attempt
    extra = 0
    can_delete = False
    fields = ("number", "started_at", "duration_ms", "status_code", "outcome", "error", "response_headers", "response_body")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.action(description="Redrive selected (fresh retry budget, same webhook-id)")
def redrive_selected(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet) -> None:
    queued = delivery.redrive(
        queryset, statuses=(Delivery.DEAD, Delivery.FAILED, Delivery.DELIVERED)
    )
    skipped = queryset.count() - queued
    modeladmin.message_user(
        request,
        f"Queued {queued} deliveries." + (f" {skipped} already pending or in flight." if skipped > 0 else ""),
        messages.SUCCESS,
    )


class DeliveryAdmin(EscapedJSONAdmin):
    list_display = ("webhook_id", "kind", "event_type", "status", "destination", "attempts", "last_status", "created_at")
    list_filter = ("status", "kind")
    search_fields = ("=execution_id", "=webhook_id", "=destination")
    date_hierarchy = "created_at"
    inlines = [AttemptInline]
    actions = [redrive_selected]
    exclude = ("secret", "body", "headers")
    readonly_fields = (
        "webhook_id", "kind", "event_type", "execution_id", "subscription", "owner", "event_id", "url", "destination",
        "header_names", "body_text", "retries", "status", "next_attempt_at", "lease_until", "attempts", "budget_base",
        "budget_started_at", "last_status", "last_error", "created_at", "delivered_at", "dead_lettered_at",
    )
    fields = readonly_fields

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).defer("body")

    @admin.display(description="custom headers")
    def header_names(self, obj: Delivery) -> dict:
        return masked_headers(obj.headers)

    @admin.display(description="body (as sent)")
    def body_text(self, obj: Delivery) -> str:
        return bytes(obj.body).decode("utf-8", errors="replace")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return request.method in ("GET", "HEAD") or obj is None


admin.site.register(Delivery, DeliveryAdmin)


@admin.register(DeadLetter)
class DeadLetterAdmin(DeliveryAdmin):
    """The dead letter queue: deliveries that used up their retries (or hit a 410)."""

    list_display = ("webhook_id", "event_type", "execution_id", "destination", "attempts", "last_status", "last_error", "dead_lettered_at")
    list_filter = ("event_type",)
    date_hierarchy = "dead_lettered_at"

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).filter(status=Delivery.DEAD)


def _mask(secret: str) -> str:
    return f"{secret[:6]}…{secret[-4:]}" if len(secret) > 12 else "••••"


class SecretInline(admin.TabularInline):
    model = SubscriptionSecret
    extra = 0
    can_delete = False
    fields = ("masked", "created_at", "expires_at")
    readonly_fields = fields

    @admin.display(description="secret")
    def masked(self, obj: SubscriptionSecret) -> str:
        return _mask(obj.secret)

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(Subscription)
class SubscriptionAdmin(EscapedJSONAdmin):
    list_display = ("id", "url", "event_types", "enabled", "disabled_reason", "created_at")
    list_filter = ("enabled",)
    search_fields = ("id", "url", "description")
    readonly_fields = ("id", "owner", "header_names", "disabled_reason", "failing_since", "created_at", "updated_at")
    # Custom headers are write-only (they carry receivers' credentials): set them through the API.
    exclude = ("headers",)
    inlines = [SecretInline]
    actions = ["enable", "disable"]

    @admin.display(description="custom headers")
    def header_names(self, obj: Subscription) -> dict:
        return masked_headers(obj.headers)

    @admin.action(description="Enable selected subscriptions")
    def enable(self, request: HttpRequest, queryset: QuerySet) -> None:
        n = queryset.update(enabled=True, disabled_reason="", failing_since=None)
        self.message_user(request, f"Enabled {n} subscriptions.", messages.SUCCESS)

    @admin.action(description="Disable selected subscriptions")
    def disable(self, request: HttpRequest, queryset: QuerySet) -> None:
        n = queryset.update(enabled=False, disabled_reason="Disabled by an operator.")
        self.message_user(request, f"Disabled {n} subscriptions.", messages.SUCCESS)


@admin.register(Destination)
class DestinationAdmin(admin.ModelAdmin):
    """Receiver addresses and their circuit breakers: who is down, since when, what waits."""

    list_display = (
        "destination", "state", "consecutive_failures", "success_rate_1h", "pending", "in_flight",
        "opened_at", "next_probe_at", "last_error",
    )
    list_filter = ("state",)
    search_fields = ("destination",)
    readonly_fields = (
        "destination", "state", "consecutive_failures", "opened_at", "cooldown_seconds", "next_probe_at",
        "probe_until", "paused_until", "last_error", "updated_at",
    )
    fields = readonly_fields
    actions = ["probe_now", "close_breaker"]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return destinations.with_stats(super().get_queryset(request))

    @admin.display(description="pending", ordering="pending")
    def pending(self, obj: Destination) -> int:
        return obj.pending

    @admin.display(description="in flight", ordering="in_flight")
    def in_flight(self, obj: Destination) -> int:
        return obj.in_flight

    @admin.display(description="success, last hour")
    def success_rate_1h(self, obj: Destination) -> str:
        return "-" if not obj.attempts_1h else f"{obj.delivered_1h / obj.attempts_1h:.0%}"

    @admin.action(description="Probe now (send one delivery to test the receiver)")
    def probe_now(self, request: HttpRequest, queryset: QuerySet) -> None:
        n = destinations.probe_now(queryset.values_list("destination", flat=True))
        self.message_user(request, f"{n} destinations will be probed at once.", messages.SUCCESS)

    @admin.action(description="Close the breaker (deliveries flow again)")
    def close_breaker(self, request: HttpRequest, queryset: QuerySet) -> None:
        n = destinations.close(queryset.values_list("destination", flat=True))
        self.message_user(request, f"Closed {n} breakers.", messages.SUCCESS)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return request.method in ("GET", "HEAD") or obj is None
