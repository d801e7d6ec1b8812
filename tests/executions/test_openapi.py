"""The OpenAPI schema covers the node and execution endpoints and generates without errors."""

import pytest
from drf_spectacular.generators import SchemaGenerator

pytestmark = pytest.mark.django_db


def test_schema_generates_with_our_paths(client):
    response = client.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    schema = SchemaGenerator().get_schema(request=None, public=True)
    paths = schema["paths"]
    for path in ("/api/v1/execute/async/{target}", "/api/v1/executions/{execution_id}", "/api/v1/nodes/register",
                 "/api/v1/executions/batch-status", "/api/v1/executions/{execution_id}/cancel"):
        assert path in paths, path
    assert "202" in paths["/api/v1/execute/async/{target}"]["post"]["responses"]
