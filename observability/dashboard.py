"""The live dashboard: one page for staff, filled by the JSON APIs and kept live by SSE."""

from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import NoReverseMatch, reverse

from .models import PlatformEvent


def _url(name: str, fallback: str = "") -> str:
    # The pages linked to belong to other apps; the dashboard still renders without them.
    try:
        return reverse(name)
    except NoReverseMatch:
        return fallback


def _url_with_id(name: str) -> str:
    try:
        return reverse(name, args=["ID"])
    except NoReverseMatch:
        return ""


@staff_member_required
def dashboard(request: HttpRequest) -> HttpResponse:
    """GET /dashboard/: recent executions, nodes, the dead-letter count, all live."""
    last = PlatformEvent.objects.order_by("-id").values("id", "type").first()
    return render(
        request,
        "dashboard/index.html",
        {
            "last_event": f"#{last['id']} {last['type']}" if last else "–",
            "urls": {
                "executions": "/api/v1/executions?limit=50",
                "nodes": "/api/v1/nodes",
                "dlq": "/api/v1/webhooks/dlq?limit=1",
                "execution_stream": reverse("stream-executions"),
                "node_stream": reverse("stream-nodes"),
                "dlq_admin": _url("admin:webhooks_deadletter_changelist", "/admin/"),
                "execution_admin": _url("admin:executions_execution_changelist", "/admin/"),
                # The admin page of one execution, with ID replaced by its admin-quoted id.
                "execution_change": _url_with_id("admin:executions_execution_change"),
            }
        },
    )
