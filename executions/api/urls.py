from django.urls import path

from . import views

urlpatterns = [
    path("api/v1/nodes", views.NodeListRegisterView.as_view(), name="nodes"),
    path("api/v1/nodes/register", views.NodeRegisterView.as_view(), name="node-register"),
    path("api/v1/nodes/<str:node_id>", views.NodeDetailView.as_view(), name="node-detail"),
    path("api/v1/nodes/<str:node_id>/heartbeat", views.NodeHeartbeatView.as_view(), name="node-heartbeat"),
    path("api/v1/nodes/<str:node_id>/shutdown", views.NodeShutdownView.as_view(), name="node-shutdown"),
    path("api/v1/did/register", views.DidRegisterView.as_view(), name="did-register"),
    path("api/v1/workflow/executions/events", views.WorkflowEventView.as_view(), name="workflow-events"),
    path("api/v1/execute/async/<str:target>", views.ExecuteAsyncView.as_view(), name="execute-async"),
    path("api/v1/execute/<str:target>", views.execute_sync, name="execute-sync"),
    path("api/v1/executions", views.ExecutionListView.as_view(), name="executions"),
    path("api/v1/executions/batch-status", views.BatchStatusView.as_view(), name="executions-batch-status"),
    path("api/v1/executions/<str:execution_id>", views.ExecutionDetailView.as_view(), name="execution-detail"),
    path("api/v1/executions/<str:execution_id>/status", views.ExecutionStatusCallbackView.as_view(),
         name="execution-status-callback"),
    path("api/v1/executions/<str:execution_id>/logs", views.ExecutionLogsView.as_view(), name="execution-logs"),
    path("api/v1/executions/<str:execution_id>/cancel", views.ExecutionCancelView.as_view(), name="execution-cancel"),
]
