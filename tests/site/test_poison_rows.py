"""Defence in depth: a bad value already in the database (written before the strict
parser, or by another path) breaks no page, stream or pipeline.

On SQLite the rows hold a lone surrogate (`\\ud800` escaped in the JSON text) and
`1e999` (read back as an infinite float). PostgreSQL's jsonb refuses both a lone
surrogate and `Infinity`; there the rows hold `1e999` as jsonb reads it back, a
1,000-digit number.
"""

import asyncio
import json

import pytest
import standardwebhooks
from channels.testing import WebsocketCommunicator
from django.contrib.admin.utils import quote
from django.db import connection
from rest_framework.test import APIClient

from agentfield_site.asgi import application
from agentfield_site.lib import strict_json
from devtools.loopback import LoopbackServer
from devtools.responses import content
from devtools.sse import AsgiSse, events_only
from executions import nodes, submission
from executions.models import AgentNode, Execution
from observability import events, tail
from observability.forwarder import configuration, runner
from observability.models import ForwarderDeadLetter, PlatformEvent

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("poll_without_channel_layer")]

SURROGATE = "c\ud800d"


@pytest.fixture
def poll_without_channel_layer(settings):
    settings.CHANNEL_LAYERS = {}


@pytest.fixture(autouse=True)
def _release_stream_connections():
    yield
    tail.close_pool_connections()


@pytest.fixture
def staff(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("ops", "ops@example.com", "pw-for-tests"))
    return client


def store_json(model, pk, field: str, text: str) -> None:
    """Write the JSON `text` into a JSON column with SQL, as another path (or an older version) could."""
    table = model._meta.db_table
    column = model._meta.get_field(field).column
    cast = "json(%s)" if connection.vendor == "sqlite" else "%s::jsonb"
    with connection.cursor() as cursor:
        cursor.execute(f'UPDATE "{table}" SET "{column}" = {cast} WHERE "id" = %s', [text, pk])


def store_huge_number(model, pk, field: str) -> None:
    """Write `{"n": 1e999}` into a JSON column."""
    store_json(model, pk, field, '{"n": 1e999}')


def poison(model, pk, field: str) -> None:
    """A lone surrogate where the database stores one (SQLite), else an out-of-range number."""
    if connection.vendor == "sqlite":
        model.objects.filter(pk=pk).update(**{field: {"s": SURROGATE, "list": [SURROGATE]}})
    else:
        store_huge_number(model, pk, field)


@pytest.fixture
def bad_rows():
    agent = LoopbackServer.agent().run_in_thread()
    node, _ = nodes.register({"id": "analyzer", "base_url": agent.url, "reasoners": [{"id": "process"}]})
    execution, _ = submission.submit(submission.Request(target="analyzer.process", input={}), enqueue=False)
    poison(Execution, execution.pk, "input")
    store_huge_number(Execution, execution.pk, "result")
    poison(AgentNode, node.pk, "metadata")
    event = events.publish("node.online", agent_node_id="analyzer")
    poison(PlatformEvent, event.pk, "data")
    yield execution, node, event
    agent.stop()


def sendable(body: bytes | str) -> dict:
    """The JSON `body`, which must hold nothing a client cannot read: UTF-8, no lone
    surrogate, no NaN or Infinity. (A 1,000-digit integer is valid JSON and passes.)"""
    text = body.decode("utf-8") if isinstance(body, bytes) else body

    def refuse(literal: str):
        raise AssertionError(f"{literal} in {text[:200]}")

    value = json.loads(text, parse_constant=refuse)
    assert strict_json.problem(value) is None, strict_json.problem(value)
    return value


def strict(response) -> dict:
    body = content(response)
    assert response.status_code == 200, body[:500]
    return sendable(body)


def test_api_reads_answer_with_the_bad_values_escaped(bad_rows):
    execution, node, _ = bad_rows
    api = APIClient()
    listed = strict(api.get("/api/v1/executions"))
    assert [doc["execution_id"] for doc in listed["results"]] == [execution.id]
    detail = strict(api.get(f"/api/v1/executions/{execution.id}"))
    if connection.vendor == "sqlite":
        assert detail["result"] == {"n": None}
    batch = strict(api.post("/api/v1/executions/batch-status", {"execution_ids": [execution.id]}, format="json"))
    assert batch[execution.id]["status"] == "queued"
    assert strict(api.get("/api/v1/nodes"))["count"] == 1
    metadata = strict(api.get("/api/v1/nodes/analyzer"))["metadata"]
    if connection.vendor == "sqlite":
        assert metadata == {"s": "c\ufffdd", "list": ["c\ufffdd"]}


def test_admin_pages_render(bad_rows, staff):
    execution, node, event = bad_rows
    for url in (
        "/admin/executions/execution/",
        f"/admin/executions/execution/{quote(execution.pk)}/change/",
        "/admin/executions/agentnode/",
        f"/admin/executions/agentnode/{quote(node.pk)}/change/",
        "/admin/observability/platformevent/",
        f"/admin/observability/platformevent/{event.pk}/change/",
    ):
        assert staff.get(url).status_code == 200, url


def test_sse_and_websocket_replay_send_the_event_escaped(bad_rows):
    _, _, event = bad_rows

    async def scenario():
        sse = await AsgiSse(application, "/api/ui/v1/nodes/events", f"last_event_id={event.id - 1}").start()
        frames = events_only(await sse.read_events(1))
        await sse.close()
        ws = WebsocketCommunicator(application, f"/ws/events?last_event_id={event.id - 1}")
        assert (await ws.connect())[0]
        await ws.receive_from(5)  # stream.subscribed
        frame = await ws.receive_from(5)
        await ws.disconnect()
        return frames, frame

    frames, frame = asyncio.run(scenario())
    for text in (frames[0].data, frame):
        doc = sendable(text)
        assert doc["id"] == event.id
        if connection.vendor == "sqlite":
            assert doc["data"]["s"] == "c\ufffdd"


COLLECTOR_SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def forward_bad_events(settings, collector: LoopbackServer) -> tuple[list[PlatformEvent], APIClient]:
    """Events around two bad stored values (a lone surrogate, in a value and a key; an
    infinite number), forwarded to `collector` by one run."""
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    settings.OBSERVABILITY_FLUSH_INTERVAL = 0.05
    settings.OBSERVABILITY_RETRY_SCHEDULE = [0.05]
    api = APIClient()
    configured = api.post("/api/v1/settings/observability-webhook",
                          {"url": collector.url, "secret": COLLECTOR_SECRET}, format="json")
    assert configured.status_code == 200, configured.content
    before = events.publish("node.online", agent_node_id="before")
    bad = events.publish("node.online", agent_node_id="bad", data={"s": SURROGATE, "\udfff": 1})
    infinite = events.publish("node.online", agent_node_id="inf")
    store_huge_number(PlatformEvent, infinite.pk, "data")
    after = events.publish("node.online", agent_node_id="after")
    runner.run(seconds=10, linger=0)
    return [before, bad, infinite, after], api


@pytest.mark.skipif("connection.vendor != 'sqlite'")
def test_the_forwarder_sends_bad_stored_values_escaped_like_webhooks_do(settings):
    collector = LoopbackServer.collector()
    collector.secret = COLLECTOR_SECRET
    with collector:
        published, api = forward_bad_events(settings, collector)
        requests = list(collector.requests)
    sent = {e["event_id"]: e for r in requests for e in sendable(r.body)["events"]}
    assert list(sent) == [e.id for e in published]
    _, bad, infinite, _ = published
    assert sent[bad.id]["data"]["payload"] == {"s": "c\ufffdd", "\ufffd": 1}
    assert sent[infinite.id]["data"]["payload"] == {"n": None}
    # Signed over the bytes sent, escaped as they are.
    for request in requests:
        standardwebhooks.Webhook(COLLECTOR_SECRET).verify(request.body, request.headers)
    assert collector.bad_signatures == 0 and collector.unsigned == 0
    assert not ForwarderDeadLetter.objects.exists()
    assert configuration.status()["backlog"] == 0
    assert strict(api.get("/api/v1/settings/observability-webhook/dlq"))["total_count"] == 0


@pytest.mark.skipif("connection.vendor != 'sqlite'")
def test_a_forwarder_dead_letter_keeps_the_event_escaped_as_it_was_sent(settings):
    with LoopbackServer.collector(status=400) as collector:
        published, api = forward_bad_events(settings, collector)
        [request] = collector.requests
    _, bad, infinite, _ = published
    sent = {e["event_id"]: e for e in sendable(request.body)["events"]}
    letters = {d.event_id: d for d in ForwarderDeadLetter.objects.all()}
    assert set(letters) == set(sent) == {e.id for e in published}
    for event_id, letter in letters.items():
        assert letter.payload == sent[event_id] and letter.error_message.startswith("HTTP 400")
    assert letters[infinite.id].payload["data"]["payload"] == {"n": None}
    assert letters[bad.id].payload["data"]["payload"] == {"s": "c\ufffdd", "\ufffd": 1}
    assert strict(api.get("/api/v1/settings/observability-webhook/dlq"))["total_count"] == 4


@pytest.mark.skipif("connection.vendor != 'sqlite'")
def test_a_subscription_body_escapes_the_stored_value(settings):
    from agentfield_site.lib.outbound import encode_body
    from webhooks import subscriptions
    from webhooks.models import Delivery

    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    subscriptions.create(url="http://127.0.0.1:9/hook", event_types=["node.*"], headers={})
    event = events.publish("node.online", agent_node_id="bad", data={"s": SURROGATE})
    body = bytes(Delivery.objects.get(event_id=event.id).body)
    assert strict_json.loads(body)["data"] == {"s": "c\ufffdd"}
    # A completion body is built from the execution's stored result the same way.
    assert strict_json.loads(encode_body({"result": {"n": float("inf"), "s": SURROGATE}})) == {
        "result": {"n": None, "s": "c\ufffdd"}
    }


# Deeper than a recursive walk of the value gets (two frames a level: about 450),
# shallow enough for Django's own json.loads when it reads the row back.
DEEP = 600


def deep_text(leaf: str) -> str:
    return "[" * DEEP + leaf + "]" * DEEP


@pytest.mark.skipif("connection.vendor != 'sqlite'")  # jsonb holds no lone surrogate: nothing there needs escaping
def test_a_deep_value_beside_a_surrogate_breaks_no_page(staff):
    nodes.register({"id": "analyzer", "base_url": "http://127.0.0.1:9", "reasoners": [{"id": "process"}]})
    keyed, _ = submission.submit(submission.Request(target="analyzer.process", input={}), enqueue=False)
    deep, _ = submission.submit(submission.Request(target="analyzer.process", input={}), enqueue=False)
    store_json(Execution, keyed.pk, "result", '{"\\udfff": 1}')
    store_json(Execution, deep.pk, "result", deep_text('"c\\ud800d"'))
    api = APIClient()
    listed = {doc["execution_id"]: doc for doc in strict(api.get("/api/v1/executions"))["results"]}
    assert listed[keyed.id]["result"] == {"\ufffd": 1}
    assert json.dumps(listed[deep.id]["result"]) == deep_text('"c\\ufffdd"')
    batch = strict(api.post("/api/v1/executions/batch-status", {"execution_ids": [keyed.id, deep.id]}, format="json"))
    assert batch[keyed.id]["result"] == {"\ufffd": 1}
    assert json.dumps(batch[deep.id]["result"]) == deep_text('"c\\ufffdd"')
    for url in (
        "/admin/executions/execution/",
        f"/admin/executions/execution/{quote(keyed.pk)}/change/",
        f"/admin/executions/execution/{quote(deep.pk)}/change/",
    ):
        page = staff.get(url)
        assert page.status_code == 200, url
        page.content.decode("utf-8")


@pytest.mark.skipif("connection.vendor != 'sqlite'")
def test_a_completion_webhook_escapes_a_deep_result_with_a_surrogate_key(settings):
    from executions import lifecycle
    from webhooks.models import Delivery

    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    nodes.register({"id": "analyzer", "base_url": "http://127.0.0.1:9", "reasoners": [{"id": "process"}]})
    request = submission.Request(target="analyzer.process", input={}, webhook={"url": "http://127.0.0.1:9/hook"})
    execution, _ = submission.submit(request, enqueue=False)
    lifecycle.transition(execution.id, "running")
    result = {"\udfff": 1, "x": json.loads(deep_text("1"))}
    # Another path than the agent's answer (which strict_json now refuses) finishing it.
    lifecycle.transition(execution.id, "succeeded", result=result)
    assert Execution.objects.get(pk=execution.id).status == "succeeded"
    body = json.loads(bytes(Delivery.objects.get(execution_id=execution.id).body))
    assert body["result"]["\ufffd"] == 1 and json.dumps(body["result"]["x"]) == deep_text("1")
    assert PlatformEvent.objects.filter(execution_id=execution.id, type="execution.completed").exists()
