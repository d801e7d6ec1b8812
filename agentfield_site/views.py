import logging
import re
from collections.abc import Callable
from functools import cache, wraps

from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import URLResolver, get_resolver, reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_safe
from prometheus_client import CONTENT_TYPE_LATEST

from .auth import metrics_caller, raw_key_from
from .lib.api import error_response
from .lib.metrics import render as render_metrics

logger = logging.getLogger(__name__)


def health(request):
    """Liveness plus a database round trip; open without credentials."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception:  # noqa: BLE001 - health must answer, whatever broke
        # The driver's text names hosts, users and paths: the log gets it, not anyone asking.
        logger.exception("health check: database unavailable")
        return JsonResponse({"status": "unhealthy", "database": "unavailable"}, status=503)
    return JsonResponse({"status": "healthy", "database": "ok"})


def metrics(request: HttpRequest) -> HttpResponse:
    """GET /metrics: Prometheus text format; an admin key, a staff session or METRICS_TOKEN."""
    headers = {name.lower(): value for name, value in request.headers.items()}
    caller = metrics_caller(getattr(request, "user", None), raw_key_from(headers, request.GET))
    if caller is None:
        response = error_response(401, "unauthorized", "Send an admin key or METRICS_TOKEN as Authorization: Bearer.")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    if not caller.is_admin:
        return error_response(
            403, "forbidden", f"/metrics needs an admin key or METRICS_TOKEN; this key is {caller.scope}."
        )
    return HttpResponse(render_metrics(), content_type=CONTENT_TYPE_LATEST)


@require_safe
def landing(request: HttpRequest) -> HttpResponse:
    """GET /: where everything is (the admin's "View site" lands here)."""
    links = [
        {"title": "Dashboard", "href": reverse("dashboard"), "about": "live executions, nodes and dead letters"},
        {"title": "Admin", "href": reverse("admin:index"), "about": "inspect, redrive, manage keys and subscriptions"},
        {"title": "API docs", "href": reverse("docs"), "about": "the REST API in Swagger UI (ReDoc at /api/redoc/)"},
        {"title": "/health", "href": reverse("health"), "about": "liveness and a database round trip"},
        {"title": "/metrics", "href": reverse("metrics"), "about": "Prometheus metrics (admin key or METRICS_TOKEN)"},
    ]
    return render(request, "site/landing.html", {"links": links})


# A plain mark: browsers ask for /favicon.ico on every page they open (the admin, the
# dashboard), and a 404 there put a "Not Found" warning in the log for each one.
_FAVICON = (
    b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">'
    b'<rect width="16" height="16" rx="3" fill="#417690"/>'
    b'<path d="M4 12 8 4l4 8M5.5 9h5" stroke="#fff" stroke-width="1.6" fill="none"/></svg>'
)


@require_safe
def favicon(request: HttpRequest) -> HttpResponse:
    """GET /favicon.ico: the site's mark, as SVG (no key needed, nothing in it to protect)."""
    response = HttpResponse(_FAVICON, content_type="image/svg+xml")
    response["Cache-Control"] = "public, max-age=86400"
    return response


# The docs pages may load nothing from another host: ReDoc's bundle still shows a
# logo from its vendor's CDN, and the browser drops that request under this policy.
# Swagger UI's and ReDoc's bootstraps are inline scripts and styles.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'"
)


def _read_only(request: HttpRequest) -> HttpResponse:
    """The JSON 405 of a route that only answers GET and HEAD."""
    response = error_response(405, "method_not_allowed", f"Method {request.method} is not allowed here.")
    response["Allow"] = "GET, HEAD"
    return response


# A regex route's named group (DRF's router writes them), and what is left to strip.
_GROUP = re.compile(r"\(\?P<(\w+)>[^)]*\)")
_CONVERTER = re.compile(r"<(?:\w+:)?(\w+)>")


@cache
def _api_routes() -> list[str]:
    """Every /api/v1/ route, parameters as {name}, in path order."""

    def readable(route: str) -> str | None:
        route = route.replace("^", "").replace("$", "").replace("/?", "/")  # the router's optional slash
        route = _CONVERTER.sub(r"{\1}", _GROUP.sub(r"{\1}", route))
        if "(" in route or "\\" in route or "{format}" in route:
            return None  # a format-suffix variant, or a pattern with no one path
        return "/" + route.rstrip("/") if route.startswith("api/v1/") and route != "api/v1/" else None

    def walk(patterns, prefix=""):
        for pattern in patterns:
            route = prefix + str(pattern.pattern)
            if isinstance(pattern, URLResolver):
                yield from walk(pattern.url_patterns, route)
            elif (path := readable(route)) is not None:
                yield path

    return sorted(set(walk(get_resolver().url_patterns)))


@csrf_exempt  # API clients send keys, not CSRF tokens: a POST gets the JSON 405, not the CSRF page
def api_index(request: HttpRequest) -> HttpResponse:
    """GET /api/v1/: where the API is described, and its routes (open: it names no data)."""
    if request.method not in ("GET", "HEAD"):
        return _read_only(request)
    return JsonResponse({
        "api": "AgentField control plane",
        "version": "v1",
        "docs": reverse("docs"),
        "redoc": reverse("redoc"),
        "schema": reverse("schema"),
        "health": reverse("health"),
        "routes": _api_routes(),
    })


def self_hosted_only(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Serve `view` under DOCS_CSP, so the page it renders works offline and leaks no visits."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if request.method not in ("GET", "HEAD"):
            # A page to read: DRF's answer to OPTIONS rendered it with no template, a 500.
            return _read_only(request)
        response = view(request, *args, **kwargs)
        response["Content-Security-Policy"] = DOCS_CSP
        return response

    return wrapped
