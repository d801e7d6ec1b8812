"""A key sent as ?api_key= is never copied into the list's next/previous links."""

import pytest
from rest_framework.test import APIClient

from devtools.loopback import LoopbackServer
from executions import nodes, submission

pytestmark = pytest.mark.django_db


def test_pagination_links_drop_the_api_key(settings):
    settings.API_KEYS = ["k-in-the-url"]
    agent = LoopbackServer.agent().run_in_thread()
    try:
        nodes.register({"id": "analyzer", "base_url": agent.url, "reasoners": [{"id": "process"}]})
        for _ in range(3):
            submission.submit(submission.Request(target="analyzer.process", input={}), enqueue=False)
    finally:
        agent.stop()
    api = APIClient()
    first = api.get("/api/v1/executions", {"limit": 1, "status": "queued", "api_key": "k-in-the-url"}).json()
    assert first["next"] and "k-in-the-url" not in first["next"] and "status=queued" in first["next"]
    second = api.get(first["next"], HTTP_X_API_KEY="k-in-the-url").json()
    assert len(second["results"]) == 1 and second["previous"]
    assert second["results"][0]["execution_id"] != first["results"][0]["execution_id"]
    third = api.get(second["next"] + "&api_key=k-in-the-url").json()
    assert "k-in-the-url" not in (third["previous"] or "") and third["next"] is None
