"""Operators' view of nodes and executions.

Executions are read-only here: their status changes only through the state machine
(`executions.lifecycle`), which writes the event log and fires webhooks; an admin
form that saved a status directly would bypass all of that.
"""

from django.contrib import admin, messages
from django.db.models import QuerySet

from agentfield_site.escaped_admin import EscapedJSONAdmin
from agentfield_site.lib.api import ApiError
from webhooks.masking import masked_headers

from . import cancellation
from .models import TERMINAL, AgentNode, Execution


@admin.register(AgentNode)
class AgentNodeAdmin(EscapedJSONAdmin):
    list_display = ("id", "health_status", "lifecycle_status", "base_url", "version", "last_heartbeat", "registered_at")
    list_filter = ("health_status",)
    search_fields = ("id", "base_url")
    readonly_fields = (
        "id", "owner", "base_url", "version", "reasoners", "skills", "metadata", "instance_id",
        "health_status", "lifecycle_status", "registered_at", "last_heartbeat", "updated_at",
    )

    def has_add_permission(self, request) -> bool:
        return False  # nodes register themselves

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Execution)
class ExecutionAdmin(EscapedJSONAdmin):
    list_display = ("id", "target", "status", "agent_node_id", "created_at", "duration_ms", "webhook_registered")
    list_filter = ("status", "agent_node_id", "target", "created_at", "webhook_registered")
    search_fields = ("id", "run_id", "workflow_id", "idempotency_key")
    date_hierarchy = "created_at"
    show_full_result_count = False
    actions = ("cancel_selected",)
    exclude = ("webhook_secret", "webhook_headers")

    def get_readonly_fields(self, request, obj=None):
        hidden = ("webhook_secret", "webhook_headers")
        return [*(f.name for f in self.model._meta.fields if f.name not in hidden), "webhook_header_names"]

    @admin.display(description="webhook headers")
    def webhook_header_names(self, obj: Execution) -> dict:
        return masked_headers(obj.webhook_headers)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    @admin.action(description="Cancel the selected executions")
    def cancel_selected(self, request, queryset: QuerySet) -> None:
        cancelled = 0
        for execution in queryset.exclude(status__in=TERMINAL).only("id"):
            try:
                cancellation.cancel(execution.id, f"cancelled in the admin by {request.user}")
                cancelled += 1
            except ApiError as exc:
                self.message_user(request, f"{execution.id}: {exc}", messages.WARNING)
        self.message_user(request, f"Cancelled {cancelled} execution(s).", messages.SUCCESS)
