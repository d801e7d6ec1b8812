"""Unknown API routes answer a JSON 404 for every method; `/` is a landing page."""

import pytest
from django.test import Client

from agentfield_site.models import ApiKey

METHODS = ["get", "post", "put", "patch", "delete", "head", "options"]
UNKNOWN = ["/api/v1/nope", "/api/v1/nope/", "/api/v2/executions", "/api", "/api/v1/executions/x/y/z"]


def _send(client, method, path, **headers):
    if method in ("get", "head"):
        return getattr(client, method)(path, **headers)
    return getattr(client, method)(path, data='{"a": 1}', content_type="application/json", **headers)


@pytest.fixture
def csrf_client():
    # Django's test client skips CSRF checks unless asked: ask, as a browser or curl would meet them.
    return Client(enforce_csrf_checks=True)


@pytest.mark.django_db
@pytest.mark.parametrize("path", UNKNOWN)
@pytest.mark.parametrize("method", METHODS)
def test_unknown_api_route_is_json_404_without_a_key(csrf_client, method, path):
    response = _send(csrf_client, method, path)
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    if method != "head":
        body = response.json()
        assert body["error"] == "not_found"
        assert path in body["message"]


@pytest.mark.django_db
@pytest.mark.parametrize("method", METHODS)
def test_unknown_api_route_is_json_404_with_a_key(csrf_client, settings, method):
    key, raw = ApiKey.create("ops")
    response = _send(csrf_client, method, "/api/v1/nope", HTTP_X_API_KEY=raw)
    assert response.status_code == 404
    if method != "head":
        assert response.json()["error"] == "not_found"


@pytest.mark.django_db
def test_a_trailing_slash_on_a_real_route_is_a_404_that_names_the_path_without_it(client, settings):
    settings.API_KEYS = []
    body = client.get("/api/v1/nodes/").json()
    assert body["error"] == "not_found" and body["message"].endswith("end without a slash: /api/v1/nodes.")
    assert "without a slash" not in client.get("/api/v1/nope/").json()["message"]


@pytest.mark.django_db
def test_the_api_index_lists_its_routes_and_where_the_docs_are(client, settings):
    """The banner of `serve` links to /api/v1/: it answered 404."""
    settings.API_KEYS = ["a-key-nobody-sent"]
    index = client.get("/api/v1/")
    assert index.status_code == 200, "open: it names no data"
    body = index.json()
    assert (body["docs"], body["schema"]) == ("/api/docs/", "/api/schema/")
    assert "/api/v1/executions/{execution_id}" in body["routes"] and "/api/v1/nodes" in body["routes"]
    assert {"/api/v1/webhooks/subscriptions", "/api/v1/webhooks/subscriptions/{pk}"} <= set(body["routes"]), "the router's"
    assert all(route.startswith("/api/v1/") and not set(route) & set("<>^$?()") for route in body["routes"])
    assert client.get("/api/v1").json() == body
    # As curl or a browser would send it: a JSON 405, not the CSRF middleware's page.
    refused = Client(enforce_csrf_checks=True).post("/api/v1/", data="{}", content_type="application/json")
    assert refused.status_code == 405 and refused.json()["error"] == "method_not_allowed"


@pytest.mark.django_db
def test_post_to_a_stream_is_a_json_405_not_a_csrf_page(csrf_client):
    response = csrf_client.post("/api/ui/v1/executions/events", data="{}", content_type="application/json")
    assert response.status_code == 405
    assert response.json()["error"] == "method_not_allowed"


@pytest.mark.django_db
def test_landing_page_links_everything_an_operator_needs(client):
    response = client.get("/")
    assert response.status_code == 200
    html = response.content.decode()
    for href in ['href="/dashboard/"', 'href="/admin/"', 'href="/api/docs/"', 'href="/health"', 'href="/metrics"']:
        assert href in html



def test_browsers_get_a_favicon_not_a_404(client):
    # Each page a browser opened logged "Not Found: /favicon.ico" as a warning.
    response = client.get("/favicon.ico")
    assert response.status_code == 200 and response["Content-Type"] == "image/svg+xml"
    assert response.content.startswith(b"<svg") and "max-age" in response["Cache-Control"]


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/api/docs/", "/api/redoc/"])
@pytest.mark.parametrize("method", ["options", "post", "delete"])
def test_the_docs_pages_answer_other_methods_with_a_json_405(admin_client, path, method):
    # OPTIONS /api/docs/ was a 500: DRF rendered its answer with no template.
    response = getattr(admin_client, method)(path)
    assert response.status_code == 405 and response["Allow"] == "GET, HEAD"
    assert response.json()["error"] == "method_not_allowed"

@pytest.mark.django_db
def test_pages_outside_the_api_keep_an_html_404(client):
    response = client.get("/nowhere")
    assert response.status_code == 404
    assert "application/json" not in response["Content-Type"]


@pytest.mark.django_db
@pytest.mark.parametrize("method", ["get", "post"])
@pytest.mark.parametrize("path", ["/api/v1/executions", "/api/v1/execute/async/analyzer.process", "/api/v1/nope"])
def test_a_host_the_server_does_not_answer_for_is_a_json_400_under_the_api(client, method, path):
    response = _send(client, method, path, HTTP_HOST="evil.example")
    assert response.status_code == 400 and response["Content-Type"] == "application/json"
    assert response.json()["error"] == "bad_request" and "ALLOWED_HOSTS" in response.json()["message"]
    page = client.get("/admin/login/", HTTP_HOST="evil.example")
    assert page.status_code == 400 and "application/json" not in page["Content-Type"]


@pytest.mark.django_db
@pytest.mark.parametrize("method", ["get", "post", "delete"])
def test_the_schemas_refusals_are_json_errors_not_yaml_documents(client, settings, method):
    """A browser saved the YAML 401 as a file; a client could not read it as the API's errors."""
    settings.API_KEYS = ["a-key-nobody-sent"]
    response = getattr(client, method)("/api/schema/")
    assert response.status_code in (401, 405)
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"] in ("unauthorized", "method_not_allowed")
    key, raw = ApiKey.create("ops", ApiKey.Scope.ADMIN)
    schema = client.get("/api/schema/", HTTP_X_API_KEY=raw)
    assert schema.status_code == 200 and schema["Content-Type"].startswith("application/vnd.oai.openapi")
