"""Operators' view of nodes and executions.

Executions are read-only here: their status changes only through the state machine
(`executions.lifecycle`), which writes the event log and fires webhooks; an admin
form that saved a status directly would bypass all of that.
"""

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.utils import quote
from django.db.models import Count, OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from agentfield_site.admin_bases import EscapedJSONAdmin, ReadOnlyAdmin
from agentfield_site.lib.masking import masked_headers
from observability.models import PlatformEvent
from webhooks.models import Delivery

from . import cancellation, dispatch
from .models import TERMINAL, AgentNode, Execution

# Rows shown on an execution's page; the links lead to the full lists.
RELATED_LIMIT = 50


@admin.register(AgentNode)
class AgentNodeAdmin(EscapedJSONAdmin):
    list_display = ("id", "health_status", "lifecycle_status", "calls", "base_url", "version", "last_heartbeat",
                    "registered_at")
    list_filter = ("health_status",)
    search_fields = ("id", "base_url")
    readonly_fields = (
        "id", "owner", "base_url", "version", "reasoners", "skills", "metadata", "instance_id",
        "health_status", "lifecycle_status", "calls", "registered_at", "last_heartbeat", "updated_at",
    )

    def get_queryset(self, request) -> QuerySet:
        calling = (
            Execution.objects.filter(dispatch.calling(), agent_node_id=OuterRef("pk"))
            .order_by().values("agent_node_id").annotate(n=Count("id")).values("n")
        )
        return super().get_queryset(request).annotate(calls_in_flight=Coalesce(Subquery(calling), 0))

    @admin.display(description="calls in flight")
    def calls(self, node: AgentNode) -> str:
        """Calls going on now against the node's cap: at the cap, its further executions wait."""
        return f"{node.calls_in_flight} / {settings.AGENT_MAX_CALLS_PER_NODE}"

    def has_add_permission(self, request) -> bool:
        return False  # nodes register themselves

    def has_change_permission(self, request, obj=None) -> bool:
        return False


def webhook_state(execution: Execution, delivery_status: str | None, attempts: int | None) -> str:
    """One word for the completion webhook: refused, waiting, pending, retrying, delivered, dead..."""
    if execution.webhook_error:
        return "refused"
    if not execution.webhook_registered:
        return "—"
    if delivery_status is None:
        return "waiting" if execution.status not in TERMINAL else "not sent"
    if delivery_status == Delivery.Status.PENDING and attempts:
        return "retrying"
    return delivery_status


def _table(headers: tuple[str, ...], rows) -> str:
    head = format_html_join("", "<th>{}</th>", ((h,) for h in headers))
    body = format_html_join("", "<tr>{}</tr>", ((row,) for row in rows))
    return format_html('<table class="related"><thead><tr>{}</tr></thead><tbody>{}</tbody></table>', head, body)


@admin.register(Execution)
class ExecutionAdmin(ReadOnlyAdmin):
    list_display = ("id", "target", "status", "webhook", "agent_node_id", "created_at")
    # Status and time only: node and target are high-cardinality (SELECT DISTINCT over
    # every execution), so they are searched instead.
    list_filter = ("status", "created_at", "webhook_registered")
    search_fields = ("=id", "=run_id", "=workflow_id", "=idempotency_key", "=agent_node_id", "=target")
    search_help_text = "An execution, run or workflow id, idempotency key, node id or target (exact)."
    date_hierarchy = "created_at"
    show_full_result_count = False
    actions = ("cancel_selected",)
    exclude = ("webhook_secret", "webhook_headers")
    fieldsets = (
        (None, {"fields": ("id", "target", "status", "status_reason", "agent_node_id", "duration_ms")}),
        ("Webhook", {"fields": ("webhook", "webhook_url", "webhook_header_names", "webhook_error", "deliveries")}),
        ("Input and result", {"fields": ("input", "result", "error", "error_category", "error_details", "context")}),
        ("Events", {"fields": ("events",)}),
        ("Times", {"fields": ("created_at", "enqueued_at", "started_at", "completed_at", "updated_at")}),
        ("Workflow", {"classes": ("collapse",), "fields": (
            "type", "reasoner_id", "run_id", "workflow_id", "parent_execution_id", "session_id", "actor_id",
            "idempotency_key",
        )}),
        ("Dispatch", {"classes": ("collapse",), "fields": (
            "dispatch_state", "dispatch_attempts", "dispatch_token", "dispatch_lease_until", "webhook_registered",
        )}),
    )

    def get_readonly_fields(self, request, obj=None):
        hidden = ("webhook_secret", "webhook_headers")
        own = [f.name for f in self.model._meta.fields if f.name not in hidden]
        return [*own, "webhook", "webhook_header_names", "deliveries", "events"]

    @admin.display(description="webhook headers")
    def webhook_header_names(self, obj: Execution) -> dict:
        return masked_headers(obj.webhook_headers)

    def get_queryset(self, request) -> QuerySet:
        latest = Delivery.objects.filter(execution_id=OuterRef("id"), kind=Delivery.Kind.COMPLETION).order_by("-id")
        return super().get_queryset(request).annotate(
            webhook_status=Subquery(latest.values("status")[:1]),
            webhook_attempts=Subquery(latest.values("attempts")[:1]),
        )

    @admin.display(description="webhook")
    def webhook(self, obj: Execution) -> str:
        state = webhook_state(obj, obj.webhook_status, obj.webhook_attempts)
        if state in ("refused", "dead", "failed", "retrying"):
            return format_html('<strong class="webhook-{}" title="{}">{}</strong>', state, obj.webhook_error, state)
        return state

    @admin.display(description="deliveries")
    def deliveries(self, obj: Execution) -> str:
        rows = Delivery.objects.filter(execution_id=obj.id).defer("body").order_by("id")[:RELATED_LIMIT]
        if not rows:
            return "—"
        return _table(
            ("delivery", "kind", "status", "attempts", "last status", "last error", "next attempt"),
            (
                format_html(
                    '<td><a href="{}">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>',
                    reverse("admin:webhooks_delivery_change", args=[quote(row.pk)]), row.webhook_id, row.kind,
                    row.status, row.attempts, row.last_status or "—", row.last_error[:200] or "—",
                    row.next_attempt_at.strftime("%Y-%m-%d %H:%M:%S") if row.status == Delivery.Status.PENDING else "—",
                )
                for row in rows
            ),
        )

    @admin.display(description="events")
    def events(self, obj: Execution) -> str:
        rows = PlatformEvent.objects.filter(execution_id=obj.id).order_by("id")[:RELATED_LIMIT]
        if not rows:
            return "—"
        return _table(
            ("id", "type", "status", "time"),
            (
                format_html(
                    '<td><a href="{}">{}</a></td><td>{}</td><td>{}</td><td>{}</td>',
                    reverse("admin:observability_platformevent_change", args=[quote(row.pk)]), row.pk, row.type,
                    row.status or "—", row.timestamp.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
                )
                for row in rows
            ),
        )

    @admin.action(description="Cancel the selected executions")
    def cancel_selected(self, request, queryset: QuerySet) -> None:
        ids = list(queryset.exclude(status__in=TERMINAL).values_list("id", flat=True))
        cancelled, refused = cancellation.cancel_many(ids, f"cancelled in the admin by {request.user}")
        for execution_id, why in refused:
            self.message_user(request, f"{execution_id}: {why}", messages.WARNING)
        self.message_user(request, f"Cancelled {cancelled} execution(s).", messages.SUCCESS)
