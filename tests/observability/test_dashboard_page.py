"""The dashboard page: staff only (through the admin login), wired to the APIs and streams."""

import json

import pytest
from django.contrib.auth.models import User

pytestmark = pytest.mark.django_db


def test_anonymous_and_non_staff_are_sent_to_the_admin_login(client):
    response = client.get("/dashboard/")
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/?next=/dashboard/")
    client.force_login(User.objects.create_user("joe", password="pw-joe-12345"))
    assert client.get("/dashboard/").status_code == 302


def test_staff_sees_the_page_with_its_data_sources(client):
    client.force_login(User.objects.create_user("ops", password="pw-ops-12345", is_staff=True))
    response = client.get("/dashboard/")
    assert response.status_code == 200
    html = response.content.decode()
    start = html.index('<script id="dashboard-urls" type="application/json">') + len('<script id="dashboard-urls" type="application/json">')
    urls = json.loads(html[start : html.index("</script>", start)])
    assert urls["execution_stream"] == "/api/ui/v1/executions/events"
    assert urls["node_stream"] == "/api/ui/v1/nodes/events"
    assert urls["executions"].startswith("/api/v1/executions")
    assert urls["dlq"].startswith("/api/v1/webhooks/dlq")
    assert urls["dlq_admin"].startswith("/admin/")
    for element in ('id="executions"', 'id="nodes"', 'id="dlq-count"', 'id="connection"', "dashboard/dashboard.js"):
        assert element in html


def test_static_script_and_styles_are_served(client):
    for path in ("/static/dashboard/dashboard.js", "/static/dashboard/dashboard.css"):
        response = client.get(path)
        assert response.status_code == 200, path
        body = b"".join(response.streaming_content) if response.streaming else response.content
        assert body
