"""Walk every URL pattern without credentials: each one that needs them refuses.

Open by design: /health, the landing page (links only) and the admin's login and logout pages. The OpenAPI
schema and its docs page follow the API's rule.
"""

import re

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

OPEN = {"/", "/health", "/health/", "/admin/login/", "/admin/logout/"}
# The JSON 404 for unknown /api/ paths: there is nothing behind it to protect.
CATCH_ALL = {"/api/"}
SAMPLE = {"pk": "x1", "id": "x1", "node_id": "n1", "execution_id": "exec_x1"}


def _walk(patterns, prefix=""):
    for p in patterns:
        route = prefix + str(p.pattern)
        if isinstance(p, URLResolver):
            yield from _walk(p.url_patterns, route)
        elif isinstance(p, URLPattern):
            yield route


def _concrete(route: str) -> str | None:
    """A request path for a route, with sample values in its parameters."""
    route = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: SAMPLE.get(m.group(1), "x1"), route)
    if route.startswith("^") or "(?P" in route or "\\" in route:
        # A regex route (admin internals, format suffixes): take literal ones only.
        route = route.lstrip("^").rstrip("$")
        if any(c in route for c in "()[]*+?\\|"):
            return None
    return "/" + route


def all_paths() -> list[str]:
    paths = {_concrete(r) for r in _walk(get_resolver().url_patterns)}
    return sorted(p for p in paths if p and not p.startswith("/static/"))


@pytest.mark.django_db
def test_every_route_needs_credentials_when_keys_are_configured(client, settings):
    settings.API_KEYS = ["matrix-key"]
    offenders = []
    for path in all_paths():
        if path in OPEN or path in CATCH_ALL:
            continue
        for method in ("get", "post"):
            response = getattr(client, method)(path, content_type="application/json", data="{}") if method == "post" else client.get(path)
            code = response.status_code
            if path.startswith("/admin/") or path.startswith("/dashboard/"):
                ok = code in (302, 401, 403, 404, 405)
                if code == 302:
                    ok = "/admin/login/" in response.headers.get("Location", "")
            else:
                ok = code in (401, 403, 404, 405)
                if code == 404:
                    # A 404 is only fine for a missing object *after* auth; without
                    # credentials the API must not reveal whether it exists.
                    ok = False
                if code == 405:
                    ok = True
            if not ok:
                offenders.append(f"{method.upper()} {path} -> {code}")
    assert not offenders, "\n".join(offenders)


@pytest.mark.django_db
def test_api_refusal_is_json_with_error_and_message(client, settings):
    settings.API_KEYS = ["matrix-key"]
    response = client.get("/api/v1/executions")
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"
    assert response.json()["message"]
    ok = client.get("/api/v1/executions", HTTP_X_API_KEY="matrix-key")
    assert ok.status_code == 200
