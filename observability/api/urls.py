from django.urls import path  # noqa: F401

from observability import streams
from observability.api import forwarder as forwarder_views

_OBS = "api/v1/settings/observability-webhook"

urlpatterns: list = [
    path("api/ui/v1/executions/events", streams.execution_events, name="stream-executions"),
    path("api/ui/v1/nodes/events", streams.node_events, name="stream-nodes"),
    path("api/v1/executions/<str:execution_id>/events", streams.one_execution_events, name="stream-execution"),
    path(_OBS, forwarder_views.ObservabilityWebhookView.as_view(), name="observability-webhook"),
    path(f"{_OBS}/status", forwarder_views.ObservabilityStatusView.as_view(), name="observability-status"),
    path(f"{_OBS}/dlq", forwarder_views.ObservabilityDeadLettersView.as_view(), name="observability-dlq"),
    path(f"{_OBS}/redrive", forwarder_views.ObservabilityRedriveView.as_view(), name="observability-redrive"),
]
