from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from observability import dashboard

from .lib import api
from .views import health, landing

urlpatterns = [
    path("", landing, name="landing"),
    path("health", health, name="health"),
    path("health/", health),
    path("admin/", admin.site.urls),
    path("dashboard/", dashboard.dashboard, name="dashboard"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("", include("executions.api.urls")),
    path("", include("webhooks.api.urls")),
    path("", include("observability.api.urls")),
    re_path(r"^api(/|$)", api.api_not_found),
]

handler404 = "agentfield_site.lib.api.api_not_found"
handler500 = "agentfield_site.lib.api.server_error"
