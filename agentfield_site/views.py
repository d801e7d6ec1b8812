from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse


def health(request):
    """Liveness plus a database round trip; open without credentials."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        db = "ok"
    except Exception as exc:  # noqa: BLE001 - health must answer, whatever broke
        return JsonResponse({"status": "unhealthy", "database": str(exc)}, status=503)
    return JsonResponse({"status": "healthy", "database": db})


def landing(request: HttpRequest) -> HttpResponse:
    """GET /: where everything is (the admin's "View site" lands here)."""
    links = [
        {"title": "Dashboard", "href": reverse("dashboard"), "about": "live executions, nodes and dead letters"},
        {"title": "Admin", "href": reverse("admin:index"), "about": "inspect, redrive, manage keys and subscriptions"},
        {"title": "API docs", "href": reverse("docs"), "about": "the REST API (Swagger UI; ReDoc at /api/redoc/)"},
        {"title": "/health", "href": reverse("health"), "about": "liveness and a database round trip"},
        {"title": "/metrics", "href": "/metrics", "about": "Prometheus metrics (admin key or METRICS_TOKEN)"},
    ]
    return render(request, "site/landing.html", {"links": links})
