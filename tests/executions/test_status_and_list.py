"""Reading executions: the status document, batch status, list filters and cursor pages."""

from datetime import timedelta

import pytest
from django.utils import timezone

from agentfield_site.lib.timefmt import iso
from executions import lifecycle, submission
from executions.models import Execution

pytestmark = pytest.mark.django_db


def _make(target="analyzer.process", run_id="") -> Execution:
    execution, _ = submission.submit(submission.Request(target=target, input={"n": 1}, run_id=run_id), enqueue=False)
    return execution


def test_status_document(api, node):
    execution = _make()
    lifecycle.transition(execution.id, "running")
    lifecycle.transition(execution.id, "succeeded", result={"a": 1})
    doc = api.get(f"/api/v1/executions/{execution.id}").json()
    for key in ("execution_id", "run_id", "workflow_id", "status", "target", "type", "agent_node_id", "reasoner_id",
                "result", "created_at", "started_at", "completed_at", "duration_ms", "webhook_registered", "webhook_events"):
        assert key in doc, key
    assert doc["status"] == "succeeded" and doc["result"] == {"a": 1} and doc["webhook_events"] == []
    assert doc["agent_node_id"] == "analyzer" and doc["reasoner_id"] == "process"
    assert api.get("/api/v1/executions/exec_missing").status_code == 404


def test_batch_status(api, node):
    a, b = _make(), _make()
    response = api.post("/api/v1/executions/batch-status", {"execution_ids": [a.id, b.id, "exec_x"]}, format="json")
    assert response.status_code == 200
    body = response.json()
    assert body[a.id]["status"] == "queued" and body[b.id]["execution_id"] == b.id
    assert body["exec_x"]["status"] == "not_found"
    for bad in ({}, {"execution_ids": []}, {"execution_ids": "x"}, {"execution_ids": ["x"] * 501}):
        assert api.post("/api/v1/executions/batch-status", bad, format="json").status_code == 400


def test_list_filters(api, node):
    first = _make(run_id="run_one")
    second = _make(target="analyzer.count")
    lifecycle.transition(second.id, "cancelled")
    Execution.objects.filter(pk=first.id).update(created_at=timezone.now() - timedelta(hours=1))

    def ids(query: str) -> list[str]:
        response = api.get(f"/api/v1/executions{query}")
        assert response.status_code == 200, response.content
        return [d["execution_id"] for d in response.json()["results"]]

    assert ids("") == [second.id, first.id], "newest first"
    assert ids("?status=cancelled") == [second.id]
    assert ids("?status=canceled") == [second.id], "aliases filter too"
    assert ids("?workflow_id=run_one") == [first.id]
    assert ids("?target=analyzer.count") == [second.id]
    assert ids("?agent_node_id=analyzer") == [second.id, first.id]
    assert ids("?agent_node_id=other") == []
    cut = iso(timezone.now() - timedelta(minutes=30))
    assert ids(f"?since={cut}") == [second.id]
    assert ids(f"?until={cut}") == [first.id]
    assert api.get("/api/v1/executions?status=bogus").status_code == 400
    assert api.get("/api/v1/executions?since=yesterday").status_code == 400


def test_cursor_pagination_walks_every_row_once(api, node):
    made = {_make().id for _ in range(7)}
    seen, url, pages = [], "/api/v1/executions?limit=3", 0
    while url:
        body = api.get(url).json()
        seen += [d["execution_id"] for d in body["results"]]
        url, pages = body["next"], pages + 1
    assert pages == 3 and len(seen) == 7 and set(seen) == made
    assert api.get("/api/v1/executions?cursor=garbage").status_code == 400


def _finished_with(size: int) -> Execution:
    execution = _make()
    lifecycle.transition(execution.id, "running")
    lifecycle.transition(execution.id, "succeeded", result={"text": "r" * size})
    return execution


def test_a_page_holds_what_fits_in_its_budget_and_the_cursor_goes_on(api, node, settings):
    # Results of an agent's choosing, up to a megabyte each: 500 of them were one page.
    settings.API_PAGE_MAX_BYTES = 1000
    big = [_finished_with(400) for _ in range(5)]
    huge = _finished_with(5000)
    newest_first = [e.id for e in reversed([*big, huge])]

    pages, url = [], "/api/v1/executions?limit=10"
    while url:
        body = api.get(url).json()
        pages.append([d["execution_id"] for d in body["results"]])
        url = body["next"]
    # One larger than the budget goes alone (a page is never empty); the others two by two.
    assert pages == [newest_first[:1], newest_first[1:3], newest_first[3:5], newest_first[5:]]

    # And back: the previous pages hold the same rows.
    second = api.get("/api/v1/executions?limit=10").json()["next"]
    third = api.get(second).json()["next"]
    back = api.get(api.get(third).json()["previous"]).json()
    assert [d["execution_id"] for d in back["results"]] == newest_first[1:3]


def test_a_batch_status_past_the_budget_is_413(api, node, settings):
    settings.API_PAGE_MAX_BYTES = 1000
    small, big = _finished_with(100), _finished_with(2000)
    assert api.post("/api/v1/executions/batch-status", {"execution_ids": [small.id]}, format="json").status_code == 200
    refused = api.post("/api/v1/executions/batch-status", {"execution_ids": [small.id, big.id]}, format="json")
    assert refused.status_code == 413 and refused.json()["error"] == "payload_too_large"
    assert "fewer ids" in refused.json()["message"]
