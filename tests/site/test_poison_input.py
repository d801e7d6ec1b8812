"""Poison input refused at the door: every JSON endpoint and the WebSocket answer a
400 `invalid_json` that says what and where, and nothing is written."""

import asyncio
import json

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import connections
from django.test import RequestFactory
from django.urls import reverse
from rest_framework.test import APIClient

from agentfield_site.asgi import application
from agentfield_site.lib.api import BodyLimitMiddleware
from agentfield_site.models import ApiKey
from devtools.loopback import LoopbackServer
from executions import nodes, submission
from executions.models import AgentNode, Execution
from observability import tail
from observability.models import ForwarderConfig, PlatformEvent
from webhooks.models import Subscription

HOSTILE = {
    "escaped surrogate": (b'{"input": {"document": "c\\ud800d"}}', "surrogate (\\ud800) at character 1 in the string at $.input.document"),
    "raw surrogate bytes": (b'{"input": {"document": "c\xed\xa0\x80d"}}', "not UTF-8 at byte 25"),
    "surrogate in a key": (b'{"input": {"\\udc00": 1}}', "in a key at $.input"),
    "NUL": (b'{"input": {"d": "\\u0000"}}', "NUL character"),
    "1e999": (b'{"input": {"n": 1e999}}', "the number 1e999 at $.input.n does not fit a double"),
    "NaN": (b'{"input": {"n": NaN}}', "the number NaN at $.input.n"),
    "huge int": (b'{"input": {"n": ' + b"1" * 400 + b"}}", "does not fit a double"),
    "deep": (b'{"input": ' + b"[" * 1000 + b"]" * 1000 + b"}", "nesting deeper than 128"),
    "very deep": (b"[" * 200_000, "nesting deeper than 128"),
}


@pytest.fixture
def world(db):
    agent = LoopbackServer.agent().run_in_thread()
    nodes.register({"id": "analyzer", "base_url": agent.url, "reasoners": [{"id": "process"}]})
    execution, _ = submission.submit(submission.Request(target="analyzer.process", input={}), enqueue=False)
    yield execution
    agent.stop()


def endpoints(execution_id: str) -> list[str]:
    return [
        "/api/v1/execute/async/analyzer.process",
        "/api/v1/execute/analyzer.process",
        f"/api/v1/executions/{execution_id}/status",
        f"/api/v1/executions/{execution_id}/logs",
        f"/api/v1/executions/{execution_id}/cancel",
        "/api/v1/executions/batch-status",
        "/api/v1/nodes/register",
        "/api/v1/nodes/analyzer/heartbeat",
        "/api/v1/workflow/executions/events",
        "/api/v1/webhooks/subscriptions",
        "/api/v1/settings/observability-webhook",
    ]


@pytest.mark.parametrize("case", list(HOSTILE))
def test_every_json_endpoint_refuses_with_what_and_where(world, case):
    body, says = HOSTILE[case]
    api = APIClient()
    events_before = PlatformEvent.objects.count()
    for url in endpoints(world.id):
        response = api.generic("POST", url, body, content_type="application/json")
        assert response.status_code == 400, (url, response.content[:300])
        answer = response.json()
        assert answer["error"] == "invalid_json", url
        assert says in answer["message"], (url, answer["message"])
    assert PlatformEvent.objects.count() == events_before
    assert Execution.objects.count() == 1 and Execution.objects.get().status == "queued"
    assert AgentNode.objects.count() == 1
    assert not Subscription.objects.exists() and not ForwarderConfig.objects.exists()


def test_a_number_the_field_cannot_hold_is_400(world):
    response = APIClient().post(
        f"/api/v1/executions/{world.id}/status", {"status": "succeeded", "duration_ms": 1e308}, format="json"
    )
    assert response.status_code == 400 and response.json()["error"] == "invalid_field"
    assert "duration_ms" in response.json()["message"]
    assert Execution.objects.get().status == "queued"


@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/executions?cursor=cD16eno%3D",  # base64 of "p=zzz": framed, but no time
        "/api/v1/executions?cursor=%25%25%25",
        "/api/v1/executions?limit=x",
        "/api/v1/webhooks/dlq?offset=-1",
        "/api/v1/webhooks/dlq?limit=1e5",
        "/api/v1/settings/observability-webhook/dlq?offset=x",
        "/api/ui/v1/executions/events?last_event_id=%C2%B2",  # "²" passes str.isdigit()
        "/api/ui/v1/executions/events?last_event_id=9999999999999999999",
        "/api/v1/executions?workflow_id=%00",
        "/api/v1/executions?since=9999-12-31T23:59:59-05:00",  # the year 10000 in UTC
        "/api/v1/executions?until=0001-01-01T00:00:00%2B05:00",  # the year 0 in UTC
        "/api/v1/executions?cursor=cD05OTk5LTEyLTMxVDIzOjU5OjU5LTA1OjAw",  # "p=9999-12-31T23:59:59-05:00"
    ],
)
def test_cursors_limits_and_ids_that_do_not_parse_are_400(world, url):
    response = APIClient().get(url)
    assert response.status_code == 400, response.content[:300]
    assert response.json()["error"] == "bad_request" and response.json()["message"]


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("GET", "/api/v1/executions/%00"),
        ("GET", "/api/v1/executions/%00/events"),
        ("GET", "/api/v1/nodes/%00"),
        ("GET", "/api/v1/webhooks/subscriptions/%00"),
        ("POST", "/api/v1/executions/%00/cancel"),
        ("POST", "/api/v1/nodes/%00/heartbeat"),
    ],
)
@pytest.mark.parametrize("scope", [None, "client", "agent", "admin"])
def test_a_nul_in_an_id_is_a_4xx_on_every_database(world, method, url, scope):
    """PostgreSQL refuses a query holding NUL (400); SQLite finds nothing (404).

    With a key, the hot routes' fast path (`fast_lane`) is asked first: it leaves such an id to DRF.
    """
    headers = {}
    if scope is not None:
        headers["HTTP_X_API_KEY"] = ApiKey.create(f"poison {scope}", scope)[1]
    response = APIClient().generic(method, url, b"{}", content_type="application/json", **headers)
    assert response.status_code in (400, 403, 404), response.content[:300]
    assert response.json()["error"] in ("bad_request", "not_found", "forbidden")


@pytest.mark.parametrize("name", ["execution_id", "subscription", "event"])
def test_a_nul_in_a_dead_letter_filter_finds_nothing_or_is_a_400(world, name):
    """PostgreSQL refuses a query holding NUL (400); SQLite finds no such dead letter."""
    listed = APIClient().get(f"/api/v1/webhooks/dlq?{name}=%00")
    redriven = APIClient().post("/api/v1/webhooks/dlq/redrive", {"filter": {name: "\x00"}}, format="json")
    for response in (listed, redriven):
        assert response.status_code in (200, 400), response.content[:300]
    if listed.status_code == 200:
        assert listed.json()["entries"] == []
    if redriven.status_code == 200:
        assert redriven.json()["processed"] == 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("poll_without_channel_layer")
def test_the_websocket_answers_an_error_frame_and_stays_open(settings):
    settings.CHANNEL_LAYERS = {}

    async def scenario() -> list[dict]:
        ws = WebsocketCommunicator(application, "/ws/events")
        assert (await ws.connect())[0]
        await ws.receive_from(5)  # stream.subscribed
        answers = []
        for text in (
            '{"action": "subscribe", "filters": {"execution_id": "c\\ud800d"}}',
            '{"action": "subscribe", "last_event_id": 1e999}',
            '{"action": "subscribe", "filters": ' + "[" * 5000 + "]" * 5000 + "}",
            '{"action": "subscribe", "filters": {"execution_id": "a\\u0000"}}',
        ):
            await ws.send_to(text_data=text)
            answers.append(json.loads(await ws.receive_from(5)))
        await ws.send_to(text_data='{"action": "subscribe", "filters": {"types": "node.*"}}')
        answers.append(json.loads(await ws.receive_from(5)))
        await ws.disconnect()
        return answers

    try:
        answers = asyncio.run(scenario())
    finally:
        tail.close_pool_connections()
        asyncio.run(sync_to_async(connections.close_all)())
    assert [a["error"] for a in answers[:4]] == ["invalid_json"] * 4
    assert "$.filters.execution_id" in answers[0]["message"] and "does not fit a double" in answers[1]["message"]
    assert "nesting deeper than 128" in answers[2]["message"]
    assert answers[4]["type"] == "stream.subscribed", "the socket is still usable"


@pytest.fixture
def poll_without_channel_layer(settings):
    settings.CHANNEL_LAYERS = {}


def test_a_chunked_body_that_cannot_be_read_is_411_not_an_empty_body():
    """Under WSGI (no server here dechunks for Django) the body is unreadable: 411, never `{}`.
    The ASGI path, which reads it whole, is tested against a real daphne (test_daphne_edges)."""
    request = RequestFactory().generic(
        "POST", "/api/v1/execute/async/analyzer.process", b'{"input": {}}',
        content_type="application/json", HTTP_TRANSFER_ENCODING="chunked",
    )
    del request.META["CONTENT_LENGTH"]
    response = BodyLimitMiddleware(lambda r: pytest.fail("the view must not run"))(request)
    assert response.status_code == 411 and json.loads(response.content)["error"] == "length_required"


@pytest.mark.parametrize("query", [
    "created_at__gte=9999-12-31+23:59:59-05:00",  # the year 10000 in UTC
    "created_at__year=99999",
    "event_types__contains=%00",
    "id__in=%00",
    "name=%00",
    "stopped__year=99999",
])
def test_admin_lists_answer_a_query_they_cannot_run_without_a_500(admin_client, query):
    """Any lookup on a model's own field comes through the query string: Django's "invalid lookup" page, not a 500."""
    from django.contrib import admin

    ours = [m for m in admin.site._registry if m._meta.app_label in ("agentfield_site", "executions", "webhooks",
                                                                     "observability", "django_q")]
    assert len(ours) >= 11
    for model in ours:
        url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
        response = admin_client.get(f"{url}?{query}")
        assert response.status_code in (200, 302), (url, query, response.status_code)
        if response.status_code == 302:
            assert response["Location"].endswith("?e=1")
        # An object id with a NUL (PostgreSQL refuses it in any statement), or past an
        # integer key's range (OverflowError on SQLite, DataError on PostgreSQL): no such object.
        for object_id in ("%00", "99999999999999999999999", "-99999999999999999999999"):
            response = admin_client.get(f"{url}{object_id}/change/")
            assert response.status_code == 302, (url, object_id, response.status_code)


@pytest.mark.parametrize("selected", ["\x00", "x\x00y", "not-a-number", "99999999999999999999999"])
def test_admin_actions_on_ids_that_cannot_be_ids_change_nothing_without_a_500(admin_client, selected):
    """An action's selected ids are posted as they come: one the database cannot compare is no such item."""
    from django.contrib import admin

    ours = [m for m in admin.site._registry if m._meta.app_label in ("agentfield_site", "executions", "webhooks",
                                                                     "observability", "django_q")]
    for model in ours:
        url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
        response = admin_client.post(url, {"action": "delete_selected", "_selected_action": [selected], "index": 0})
        assert response.status_code in (200, 302), (url, response.status_code)



@pytest.mark.parametrize("object_id", ["abc", "%00", "1%2F..", "99999999999999999999999", "x" * 3000])
def test_the_dead_letter_redrive_view_answers_a_malformed_id_with_a_404(admin_client, object_id):
    for method in ("get", "post"):
        response = getattr(admin_client, method)(f"/admin/webhooks/deadletter/{object_id}/redrive/")
        assert response.status_code == 404, (method, object_id, response.status_code)
