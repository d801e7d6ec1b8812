from django.urls import path  # noqa: F401

from observability import streams

urlpatterns: list = [
    path("api/ui/v1/executions/events", streams.execution_events, name="stream-executions"),
    path("api/ui/v1/nodes/events", streams.node_events, name="stream-nodes"),
    path("api/v1/executions/<str:execution_id>/events", streams.one_execution_events, name="stream-execution"),
]
