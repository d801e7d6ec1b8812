"""The operations console for deliveries: what happened, attempt by attempt, and redrive.

Deliveries and attempts are records: read-only pages, no Save or Delete. They
change only through the engine (`webhooks.delivery`), as redrive does.
Subscriptions are added and changed through the same service and validation as
the API (`webhooks.subscriptions`, `SubscriptionSerializer`), so a subscription
made here has a secret and a URL the API would accept.
"""

import json
from collections.abc import Iterable

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import quote, unquote
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponseRedirect
from django.template.defaultfilters import pluralize
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from agentfield_site.admin_bases import EscapedJSONAdmin, ReadOnlyAdmin, key_or_none
from agentfield_site.lib.masking import masked_headers

from . import delivery, destinations, subscriptions
from .api.serializers import SubscriptionSerializer
from .models import Attempt, DeadLetter, Delivery, Destination, Subscription, SubscriptionSecret

REDRIVABLE = (Delivery.Status.DEAD, Delivery.Status.FAILED, Delivery.Status.DELIVERED)


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
    held = delivery.held_by_disabled_subscription(queryset.filter(status__in=REDRIVABLE))
    queued = delivery.redrive(queryset, statuses=REDRIVABLE)
    busy = queryset.count() - queued - held
    message = f"Queued {queued} deliver{pluralize(queued, 'y,ies')}."
    if busy > 0:
        message += f" {busy} already pending or in flight."
    if held:
        message += f" {held} left as {pluralize(held, 'it is,they are')}: the subscription is disabled (enable it, then redrive)."
    modeladmin.message_user(request, message, messages.SUCCESS if queued or not held else messages.WARNING)


class DeliveryAdmin(ReadOnlyAdmin):
    # What an operator asks first, narrow enough for 1,280 px; the event type and the
    # creation time are on the page (and searchable, and in the date drill-down).
    list_display = ("id", "execution_id", "destination", "status", "attempts", "last_status", "next_attempt")
    list_display_links = ("id",)
    # Only low-cardinality filters: a filter on host or event type runs SELECT DISTINCT
    # over the whole table; those columns are searched instead.
    list_filter = ("status", "kind")
    search_fields = ("=execution_id", "=webhook_id", "=destination", "=event_type")
    search_help_text = "An execution id, webhook-id, destination (scheme://host:port) or event type (exact)."
    date_hierarchy = "created_at"
    show_full_result_count = False
    inlines = [AttemptInline]
    actions = [redrive_selected]
    exclude = ("secret", "body", "headers")
    readonly_fields = (
        "webhook_id", "kind", "event_type", "execution_id", "subscription", "owner", "event_id", "url", "destination",
        "header_names", "body_text", "retry_policy", "status", "next_attempt", "lease_until", "attempts", "budget_base",
        "budget_started_at", "last_status", "last_error", "created_at", "delivered_at", "dead_lettered_at",
    )
    fields = readonly_fields

    class Media:
        css = {"all": ("webhooks/admin.css",)}

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).defer("body")

    @admin.display(description="next attempt", ordering="next_attempt_at")
    def next_attempt(self, obj: Delivery):
        return obj.next_attempt_at if obj.status == Delivery.Status.PENDING else "—"

    @admin.display(description="on failure")
    def retry_policy(self, obj: Delivery) -> str:
        if obj.retries:
            return "retried on the schedule (WEBHOOK_RETRY_SCHEDULE), then the dead letter queue (at once on 410 Gone)"
        return "not retried: one attempt (a test send)"

    @admin.display(description="custom headers")
    def header_names(self, obj: Delivery) -> dict:
        return masked_headers(obj.headers)

    @admin.display(description="body (as sent)")
    def body_text(self, obj: Delivery) -> str:
        # Wrapped (webhooks/admin.css): one long line of JSON ran off the page.
        return format_html('<pre class="webhook-body">{}</pre>', bytes(obj.body).decode("utf-8", errors="replace"))


admin.site.register(Delivery, DeliveryAdmin)


@admin.register(DeadLetter)
class DeadLetterAdmin(DeliveryAdmin):
    """The dead letter queue: deliveries that used up their retries (or hit a 410)."""

    list_display = (
        "id", "execution_id", "destination", "event_type", "attempts", "last_status", "error", "dead_lettered_at",
    )
    # No filter panel: its width goes to the error column (everything here is dead).
    list_filter = ()
    date_hierarchy = "dead_lettered_at"
    change_form_template = "admin/webhooks/deadletter/change_form.html"

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).filter(status=Delivery.Status.DEAD)

    @admin.display(description="last error", ordering="last_error")
    def error(self, obj: Delivery) -> str:
        return obj.last_error if len(obj.last_error) <= 80 else obj.last_error[:79] + "…"

    def get_urls(self):
        redrive = self.admin_site.admin_view(self.redrive_view)
        return [path("<path:object_id>/redrive/", redrive, name="webhooks_deadletter_redrive"), *super().get_urls()]

    def redrive_view(self, request: HttpRequest, object_id: str):
        """POST from the detail page's Redrive button: the same redrive as the list action."""
        key = key_or_none(Delivery, unquote(object_id))  # a malformed id is no such row, not a 500
        row = None if key is None else Delivery.objects.filter(pk=key).first()
        if row is None:
            raise Http404("No such delivery.")
        if request.method != "POST":
            return HttpResponseRedirect(reverse("admin:webhooks_deadletter_change", args=[quote(row.pk)]))
        if delivery.redrive(Delivery.objects.filter(pk=row.pk), statuses=REDRIVABLE):
            self.message_user(request, f"Redriven: {row.webhook_id} is queued again (same webhook-id).", messages.SUCCESS)
        elif delivery.held_by_disabled_subscription(Delivery.objects.filter(pk=row.pk)):
            self.message_user(
                request, f"{row.webhook_id} is left as it is: its subscription is disabled (enable it, then redrive).",
                messages.WARNING,
            )
        else:
            self.message_user(request, f"{row.webhook_id} is already pending or in flight.", messages.WARNING)
        return HttpResponseRedirect(reverse("admin:webhooks_delivery_change", args=[quote(row.pk)]))


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


def _messages(problems) -> Iterable[str]:
    """A serializer's errors for one field as flat messages (a list field's are keyed by item)."""
    if isinstance(problems, dict):
        for item, nested in problems.items():
            yield from (f"Item {item}: {message}" for message in _messages(nested))
    elif isinstance(problems, list):
        for problem in problems:
            yield from _messages(problem)
    else:
        yield str(problems)


class _EscapedJSONField(forms.JSONField):
    """Shows its JSON with non-ASCII escaped: a lone surrogate typed in (`"\\ud800"`) cannot break the page."""

    def prepare_value(self, value):
        if isinstance(value, forms.fields.InvalidJSONInput):
            return value
        return json.dumps(value, ensure_ascii=True, cls=self.encoder)


class SubscriptionForm(forms.ModelForm):
    """The admin form, validated by the API's serializer (URL, headers, event types)."""

    class Meta:
        model = Subscription
        fields = ("url", "description", "event_types", "enabled")
        field_classes = {"event_types": _EscapedJSONField}
        help_texts = {"event_types": 'A JSON list of patterns, e.g. ["execution.*", "node.online"].'}

    def clean(self) -> dict:
        data = super().clean()
        if self.errors:
            return data
        # Custom headers are write-only here (the admin leaves them out): a change keeps
        # the stored ones, an addition starts with none.
        payload = {name: data.get(name) for name in self._meta.fields if name in self.fields}
        change = not self.instance._state.adding
        if not change:
            payload.setdefault("headers", {})
        serializer = SubscriptionSerializer(instance=self.instance if change else None, data=payload, partial=change)
        if serializer.is_valid():
            self.validated = serializer.validated_data
        else:
            for name, problems in serializer.errors.items():
                self.add_error(name if name in self.fields else None, list(_messages(problems)))
        return data


@admin.register(Subscription)
class SubscriptionAdmin(EscapedJSONAdmin):
    form = SubscriptionForm
    list_display = ("id", "url", "event_types", "enabled", "disabled_reason", "created_at")
    list_filter = ("enabled",)
    search_fields = ("id", "url", "description")
    readonly_fields = ("id", "owner", "header_names", "disabled_reason", "failing_since", "created_at", "updated_at")
    # Custom headers are write-only (they carry receivers' credentials): set them through the API.
    exclude = ("headers",)
    inlines = [SecretInline]
    actions = ["enable", "disable"]

    def save_model(self, request: HttpRequest, obj: Subscription, form: SubscriptionForm, change: bool) -> None:
        if change:
            # From what is stored, not the form's copy: re-enabling must see it was disabled.
            obj.refresh_from_db()
            SubscriptionSerializer().update(obj, form.validated)
            return
        sub, secret = subscriptions.create(**form.validated)
        obj.__dict__.update(sub.__dict__)
        messages.warning(
            request,
            f"The signing secret is {secret} — copy it now: it is not shown again "
            "(rotate it through the API to get a new one).",
        )

    @admin.display(description="custom headers")
    def header_names(self, obj: Subscription) -> dict:
        return masked_headers(obj.headers)

    @admin.action(description="Enable selected subscriptions")
    def enable(self, request: HttpRequest, queryset: QuerySet) -> None:
        n = queryset.update(enabled=True, disabled_reason="", failing_since=None)
        subscriptions.invalidate_cache()  # as a save does (post_save)
        self.message_user(request, f"Enabled {n} subscription{pluralize(n)}.", messages.SUCCESS)

    @admin.action(description="Disable selected subscriptions")
    def disable(self, request: HttpRequest, queryset: QuerySet) -> None:
        n = queryset.update(enabled=False, disabled_reason="Disabled by an operator.")
        subscriptions.invalidate_cache()
        self.message_user(request, f"Disabled {n} subscription{pluralize(n)}.", messages.SUCCESS)


@admin.register(Destination)
class DestinationAdmin(ReadOnlyAdmin):
    """Receiver addresses and their circuit breakers: who is down, since when, what waits.

    Read-only, and never deleted by hand: a running worker remembers the rows it
    made, and a deleted one would leave its destination with no breaker.
    """

    list_display = (
        "destination", "breaker", "consecutive_failures", "success_rate_1h", "pending", "in_flight",
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

    @admin.display(description="state", ordering="state")
    def breaker(self, obj: Destination) -> str:
        """The breaker's state, and a pause a 429 asked for (whatever the state) while it lasts."""
        if obj.paused_until and obj.paused_until > timezone.now():
            return f"{obj.state}, paused until {timezone.localtime(obj.paused_until):%H:%M:%S}"
        return obj.state

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
        self.message_user(request, f"{n} destination{pluralize(n)} will be probed at once.", messages.SUCCESS)

    @admin.action(description="Close the breaker (deliveries flow again)")
    def close_breaker(self, request: HttpRequest, queryset: QuerySet) -> None:
        n = destinations.close(queryset.values_list("destination", flat=True))
        self.message_user(request, f"Closed {n} breaker{pluralize(n)}.", messages.SUCCESS)
