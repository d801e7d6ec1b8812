from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularRedocView, SpectacularSwaggerView

from observability import dashboard

from .lib import api
from .lib.db_threads import on_request_threads
from .lib.openapi import SchemaView
from .views import api_index, favicon, health, landing, metrics, self_hosted_only

urlpatterns = [
    path("", landing, name="landing"),
    path("favicon.ico", favicon, name="favicon"),
    path("health", on_request_threads(health), name="health"),
    path("health/", on_request_threads(health)),
    path("metrics", metrics, name="metrics"),
    path("admin/", admin.site.urls),
    path("dashboard/", dashboard.dashboard, name="dashboard"),
    path("api/schema/", SchemaView.as_view(), name="schema"),
    path("api/docs/", self_hosted_only(SpectacularSwaggerView.as_view(url_name="schema")), name="docs"),
    path(
        "api/redoc/",
        self_hosted_only(SpectacularRedocView.as_view(url_name="schema", template_name="site/redoc.html")),
        name="redoc",
    ),
    path("api/v1/", api_index, name="api-index"),
    path("api/v1", api_index),
    path("", include("executions.api.urls")),
    path("", include("webhooks.api.urls")),
    path("", include("observability.api.urls")),
    re_path(r"^api(/|$)", api.api_not_found),
]

handler400 = "agentfield_site.lib.api.api_bad_request"
handler404 = "agentfield_site.lib.api.api_not_found"
handler500 = "agentfield_site.lib.api.server_error"
