from django.urls import path

from agentfield_site.fast_lane import fast_lane
from agentfield_site.lib.db_threads import on_request_threads

from . import views

# The hot paths (every agent's heartbeat, every submit and read) run on the request
# threads, which keep their database connections; the hottest take the fast lane.

urlpatterns = [
    path("api/v1/nodes", views.NodeListRegisterView.as_view(), name="nodes"),
    path("api/v1/nodes/register", views.NodeRegisterView.as_view(), name="node-register"),
    path("api/v1/nodes/<str:node_id>", views.NodeDetailView.as_view(), name="node-detail"),
    path("api/v1/nodes/<str:node_id>/heartbeat", fast_lane(views.NodeHeartbeatView.as_view(), "POST", views.heartbeat_answer, views.heartbeat_from_memory), name="node-heartbeat"),
    path("api/v1/nodes/<str:node_id>/shutdown", views.NodeShutdownView.as_view(), name="node-shutdown"),
    path("api/v1/did/register", views.DidRegisterView.as_view(), name="did-register"),
    path("api/v1/workflow/executions/events", views.WorkflowEventView.as_view(), name="workflow-events"),
    path("api/v1/execute/async/<str:target>", fast_lane(views.ExecuteAsyncView.as_view(), "POST", views.submit_answer), name="execute-async"),
    path("api/v1/execute/<str:target>", views.execute_sync, name="execute-sync"),
    path("api/v1/executions", on_request_threads(views.ExecutionListView.as_view()), name="executions"),
    path("api/v1/executions/batch-status", on_request_threads(views.BatchStatusView.as_view()), name="executions-batch-status"),
    path("api/v1/executions/note", views.ExecutionNoteView.as_view(), name="execution-note"),
    path("api/v1/executions/<str:execution_id>", fast_lane(views.ExecutionDetailView.as_view(), "GET", views.status_answer), name="execution-detail"),
    path("api/v1/executions/<str:execution_id>/status", views.ExecutionStatusCallbackView.as_view(),
         name="execution-status-callback"),
    path("api/v1/executions/<str:execution_id>/logs", views.ExecutionLogsView.as_view(), name="execution-logs"),
    path("api/v1/executions/<str:execution_id>/cancel", views.ExecutionCancelView.as_view(), name="execution-cancel"),
]
