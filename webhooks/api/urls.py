from django.urls import path
from rest_framework.routers import SimpleRouter

from . import views

router = SimpleRouter()
# Both `/subscriptions` (the contract) and `/subscriptions/` (DRF habit) resolve.
router.trailing_slash = "/?"
router.register("api/v1/webhooks/subscriptions", views.SubscriptionViewSet, basename="webhook-subscription")

urlpatterns = [
    path("api/v1/webhooks/dlq", views.DeadLetterListView.as_view(), name="webhook-dlq"),
    path("api/v1/webhooks/destinations", views.DestinationListView.as_view(), name="webhook-destinations"),
    path("api/v1/webhooks/dlq/redrive", views.RedriveView.as_view(), name="webhook-dlq-redrive"),
    path(
        "api/v1/executions/<str:execution_id>/webhook/retry",
        views.ExecutionWebhookRetryView.as_view(),
        name="execution-webhook-retry",
    ),
    *router.urls,
]
