"""Async submission: the 202 document, headers carried through, events, webhook registration."""

import logging

import pytest
from django.conf import settings
from django_q.models import OrmQ

from agentfield_site.lib import tasks
from executions.models import Execution
from observability.models import PlatformEvent

pytestmark = pytest.mark.django_db


def test_async_submit_answers_202_with_the_contract_document(api, node, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        response = api.post(
            "/api/v1/execute/async/analyzer.process",
            {"input": {"document": "hello"}},
            format="json",
            headers={"X-Run-ID": "run_abc", "X-Session-ID": "s1", "X-Actor-ID": "a1", "X-Parent-Execution-ID": "p1"},
        )
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["execution_id"].startswith("exec_")
    assert body["run_id"] == body["workflow_id"] == "run_abc"
    assert body["status"] == "queued"
    assert body["target"] == "analyzer.process"
    assert body["type"] == "reasoner"
    assert body["created_at"] and body["enqueued_at"]
    assert body["webhook_registered"] is False
    enqueued = [cb for cb in callbacks if getattr(cb, "func", cb).__module__ == "executions.dispatch"]
    if tasks.in_database(settings.DISPATCH_CLUSTER):
        assert not enqueued and OrmQ.objects.count() == 1, "dispatch is queued once, in the execution's transaction"
    else:
        assert len(enqueued) == 1, "dispatch is enqueued once, after commit"
    row = Execution.objects.get(pk=body["execution_id"])
    assert (row.session_id, row.actor_id, row.parent_execution_id) == ("s1", "a1", "p1")
    assert row.input == {"document": "hello"}
    event = PlatformEvent.objects.get(type="execution.created")
    assert event.execution_id == row.id and event.workflow_id == "run_abc" and event.status == "queued"
    assert event.data["target"] == "analyzer.process" and event.data["reasoner_id"] == "process"


def test_skill_target_and_generated_run_id(api, node):
    body = api.post("/api/v1/execute/async/analyzer.count", {}, format="json").json()
    assert body["type"] == "skill"
    assert body["run_id"].startswith("run_")


def test_unknown_node_or_target_is_404(api, node):
    for target in ("nobody.process", "analyzer.missing"):
        response = api.post(f"/api/v1/execute/async/{target}", {"input": {}}, format="json")
        assert response.status_code == 404
        assert response.json()["error"] == "not_found"
        assert response.json()["error_category"] == "not_found"
    assert not Execution.objects.exists()


def test_valid_webhook_is_registered(api, node, settings):
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1", "localhost", "hooks.example"]
    response = api.post(
        "/api/v1/execute/async/analyzer.process",
        {"input": {}, "webhook": {"url": "http://127.0.0.1:9/hook", "secret": "s3cret", "headers": {"X-Team": "a"}}},
        format="json",
    )
    body = response.json()
    assert response.status_code == 202
    assert body["webhook_registered"] is True
    assert "webhook_error" not in body
    row = Execution.objects.get(pk=body["execution_id"])
    assert row.webhook_url == "http://127.0.0.1:9/hook" and row.webhook_secret == "s3cret"
    assert row.webhook_headers == {"X-Team": "a"}


def test_queue_limit_answers_503_concurrency_limit(api, node, settings):
    settings.EXECUTION_QUEUE_LIMIT = 2
    for _ in range(2):
        assert api.post("/api/v1/execute/async/analyzer.process", {}, format="json").status_code == 202
    response = api.post("/api/v1/execute/async/analyzer.process", {}, format="json")
    assert response.status_code == 503
    assert response.json()["error"] == "concurrency_limit" and response["Retry-After"] == "1"
    assert Execution.objects.count() == 2


def test_one_keys_backlog_leaves_room_in_the_queue_for_everyone_else(node, settings):
    """EXECUTION_QUEUE_LIMIT_PER_KEY: a key whose executions pile up (a burst, a hung agent) meets its own limit."""
    from rest_framework.test import APIClient

    from agentfield_site.models import ApiKey

    settings.EXECUTION_QUEUE_LIMIT, settings.EXECUTION_QUEUE_LIMIT_PER_KEY = 10, 3
    clients = {}
    for name in ("busy", "calm"):
        clients[name] = APIClient()
        clients[name].credentials(HTTP_X_API_KEY=ApiKey.create(name, ApiKey.Scope.CLIENT)[1])

    def submit(name: str):
        return clients[name].post("/api/v1/execute/async/analyzer.process", {"input": {}}, format="json")

    assert [submit("busy").status_code for _ in range(3)] == [202] * 3
    refused = submit("busy")
    assert refused.status_code == 503 and refused["Retry-After"] == "1"
    assert refused.json()["error"] == "concurrency_limit" and "of this API key's" in refused.json()["message"]
    assert submit("calm").status_code == 202, "the other key's submits are not refused"
    # Once one of the busy key's executions is dispatched (no longer waiting), it may submit again.
    oldest = Execution.objects.filter(owner__name="busy").order_by("created_at").first()
    Execution.objects.filter(pk=oldest.pk).update(status="running", dispatch_state=Execution.Dispatch.IN_FLIGHT)
    assert submit("busy").status_code == 202


def test_far_below_its_limit_a_keys_backlog_is_counted_once_a_second_not_on_every_submit(node, settings):
    """The count reads the key's waiting rows: on every submit it grew with the backlog."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from rest_framework.test import APIClient

    from agentfield_site.models import ApiKey

    settings.EXECUTION_QUEUE_LIMIT, settings.EXECUTION_QUEUE_LIMIT_PER_KEY = 1000, 1000
    client = APIClient()
    client.credentials(HTTP_X_API_KEY=ApiKey.create("steady", ApiKey.Scope.CLIENT)[1])
    with CaptureQueriesContext(connection) as queries:
        for _ in range(5):
            assert client.post("/api/v1/execute/async/analyzer.process", {}, format="json").status_code == 202
    counts = [q["sql"] for q in queries.captured_queries if "COUNT(*)" in q["sql"].upper()]
    assert len(counts) <= 2, counts  # the queue's and the key's, once each


@pytest.mark.parametrize("limit", ["EXECUTION_QUEUE_LIMIT_PER_KEY", "EXECUTION_QUEUE_LIMIT"])
def test_executions_their_agent_reports_running_before_it_is_called_still_count_as_waiting(agent, settings, limit):
    """The queue is what waits for dispatch: an agent's early progress report does not take an execution out of it.

    An agent key may report progress for any execution of its nodes, called or not: a
    tenant whose agent reported `running` for each execution it queued (still waiting
    for a call, claimable as before) was no longer held by either queue limit.
    """
    from rest_framework.test import APIClient

    from agentfield_site.models import ApiKey

    settings.EXECUTION_QUEUE_LIMIT, settings.EXECUTION_QUEUE_LIMIT_PER_KEY = 100, 100
    setattr(settings, limit, 3)
    tenant, its_agent = APIClient(), APIClient()
    tenant.credentials(HTTP_X_API_KEY=ApiKey.create("tenant", ApiKey.Scope.CLIENT)[1])
    its_agent.credentials(HTTP_X_API_KEY=ApiKey.create("tenant-agent", ApiKey.Scope.AGENT)[1])
    registered = its_agent.post("/api/v1/nodes/register", {"id": "own", "base_url": agent.url, "version": "1",
                                                            "reasoners": [{"id": "process"}]}, format="json")
    assert registered.status_code == 201, registered.content

    def submit():
        return tenant.post("/api/v1/execute/async/own.process", {"input": {}}, format="json")

    for _ in range(3):
        execution_id = submit().json()["execution_id"]
        report = its_agent.post(f"/api/v1/executions/{execution_id}/status", {"status": "running"}, format="json")
        assert report.status_code == 200, report.content
    assert set(Execution.objects.values_list("status", "dispatch_state")) == {("running", "queued")}
    assert submit().status_code == 503, "three executions wait for dispatch, whatever their agent says"
    assert not agent.requests


@pytest.mark.django_db(transaction=True)
def test_submits_while_the_broker_is_down_are_accepted_and_logged_once(api, node, monkeypatch, caplog):
    # Each one logged its traceback: 461 in ten seconds of a Redis outage.
    from agentfield_site.lib.logs import Repeated
    from executions import dispatch

    monkeypatch.setattr(dispatch, "_enqueue_failed", Repeated(dispatch.log, dispatch._enqueue_failed.message,
                                                              logging.ERROR))

    def broker_down(*args, **kwargs):
        raise ConnectionError("the broker is down")

    monkeypatch.setattr(tasks, "enqueue", broker_down)
    monkeypatch.setattr(tasks, "in_database", lambda cluster: False)
    with caplog.at_level(logging.WARNING):
        for _ in range(20):
            response = api.post("/api/v1/execute/async/analyzer.process", {"input": {}}, format="json")
            assert response.status_code == 202, response.content
    failures = [r for r in caplog.records if "dispatch" in r.getMessage() or "on_commit" in r.getMessage()]
    assert [r.getMessage() for r in failures] == ["could not queue a dispatch; the sweeper wakes a worker for it"]


def test_an_agents_calls_are_counted_per_client_apart_from_the_clients_own(settings):
    """An agent's calls belong to the client's workflow. Counted as the client's, a hostile
    agent filled the client's quota and every submit of the client's got 503; counted as
    the agent's alone, one client's workflow filled it for the agent's calls for everyone."""
    from rest_framework.test import APIClient

    from agentfield_site.models import ApiKey

    settings.EXECUTION_QUEUE_LIMIT, settings.EXECUTION_QUEUE_LIMIT_PER_KEY = 100, 3
    clients = {name: APIClient() for name in ("c", "d")}
    for name, api in clients.items():
        api.credentials(HTTP_X_API_KEY=ApiKey.create(name, ApiKey.Scope.CLIENT)[1])
    agent = APIClient()
    agent.credentials(HTTP_X_API_KEY=ApiKey.create("agent", ApiKey.Scope.AGENT)[1])
    registered = agent.post("/api/v1/nodes/register", {
        "id": "worker", "base_url": "http://127.0.0.1:9", "reasoners": [{"id": "step"}]}, format="json")
    assert registered.status_code == 201, registered.content
    parents = {}
    for name, api in clients.items():
        parents[name] = api.post("/api/v1/execute/async/worker.step", {"input": {}}, format="json").json()["execution_id"]
    Execution.objects.filter(pk__in=parents.values()).update(status="running", dispatch_state=Execution.Dispatch.IN_FLIGHT)

    def call(parent: str):
        return agent.post("/api/v1/execute/async/worker.step", {"input": {}}, format="json",
                          headers={"X-Parent-Execution-ID": parent})

    assert [call(parents["c"]).status_code for _ in range(3)] == [202] * 3
    assert call(parents["c"]).status_code == 503, "the agent meets its limit for c's workflow"
    assert Execution.objects.filter(parent_execution_id=parents["c"], owner__name="c").count() == 3, "c's calls"
    assert call(parents["d"]).status_code == 202, "and not for d's"
    assert clients["c"].post("/api/v1/execute/async/worker.step", {"input": {}}, format="json").status_code == 202, \
        "nor c's own submits"
