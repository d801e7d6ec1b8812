"""Property: no hostile JSON body breaks anything, then or later.

Hypothesis sends bodies built from lone surrogates (escaped and as raw bytes), NUL,
odd unicode, numbers that do not fit a double, deep nesting, big strings and wrong
types to every endpoint that stores what it is given. Each answer must be below
500; afterwards every list, detail, admin page and the SSE replay must answer
without a 5xx with JSON a client can read, and the forwarder must still deliver a
later event to a loopback collector.
"""

import asyncio
import json
from dataclasses import dataclass

import pytest
from django.contrib.admin.utils import quote
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from rest_framework.test import APIClient

from agentfield_site.asgi import application
from agentfield_site.lib import strict_json
from devtools.loopback import LoopbackServer
from devtools.responses import content
from devtools.sse import AsgiSse, events_only
from executions import lifecycle, nodes, submission
from executions.models import AgentNode, Execution
from observability import events, tail
from observability.forwarder import configuration, runner
from observability.models import PlatformEvent
from webhooks.models import Subscription

pytestmark = [
    pytest.mark.django_db(transaction=True),
    # The 1 MiB strings make Hypothesis warn that it would print a large example.
    pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning"),
]

# Per endpoint; six endpoints keep the whole test near 20 s on this machine.
EXAMPLES = 25
PROPERTY = hypothesis_settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass(frozen=True)
class Raw:
    """A number literal that Python cannot produce from a value (1e999, 5,000 digits)."""

    literal: str


def encode(value: object) -> str:
    """JSON text for `value`; strings escaped (lone surrogates as \\udXXX), Raw as written."""
    if isinstance(value, Raw):
        return value.literal
    if isinstance(value, list):
        return "[" + ",".join(encode(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{encode(v)}" for k, v in value.items()) + "}"
    return json.dumps(value, allow_nan=True)


def nest(depth: int, inner: object) -> object:
    for i in range(depth):
        inner = [inner] if i % 2 else {"d": inner}
    return inner


surrogates = st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3)
odd_text = st.one_of(
    surrogates,
    st.builds(lambda a, b: a + b, st.text(max_size=10), surrogates),
    st.sampled_from(["\x00", "a\x00b", "\u202e", "\u200b", "\ufeff", "\uffff", "\U0010ffff", "😀", "e\u0301" * 40, "\r\n\t\x7f\x85"]),
    st.text(max_size=30),
)
numbers = st.one_of(
    st.sampled_from([Raw("1e999"), Raw("-1e999"), Raw("1" * 400), Raw("9" * 5000), Raw("NaN"), Raw("Infinity"), Raw("1e-999"), Raw("-0")]),
    st.sampled_from([2**63, -(2**63) - 1, 1e308, -1e308, 5e-324]),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
)
big = st.sampled_from(["x" * 100_000, "é" * 200_000, "x" * 1_100_000])  # the last is over MAX_BODY_BYTES
leaves = st.one_of(odd_text, numbers, st.none(), st.booleans(), big)
values = st.recursive(
    leaves, lambda children: st.lists(children, max_size=4) | st.dictionaries(odd_text, children, max_size=4), max_leaves=12
)
hostile = st.one_of(leaves, values, st.tuples(st.integers(100, 400), values).map(lambda t: nest(*t)))


@st.composite
def bodies(draw, shape, strategy=hostile) -> bytes:
    """A body of `shape` (a function of one hostile value), as escaped JSON or with raw surrogate bytes."""
    text = encode(shape(draw(strategy)))
    if draw(st.booleans()) or not _loads(text):
        return text.encode()
    # Undo the escapes: surrogates become raw bytes (not UTF-8), the rest UTF-8.
    return json.dumps(json.loads(text), ensure_ascii=False, allow_nan=True).encode("utf-8", "surrogatepass")


def _loads(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


def post(api: APIClient, url: str, body: bytes) -> int:
    response = api.generic("POST", url, body, content_type="application/json")
    assert response.status_code < 500, (url, body[:300], response.content[:300])
    if response.status_code >= 400:
        assert response.json()["error"] and response.json()["message"]
    return response.status_code


def readable(body: bytes | str) -> object:
    """JSON a client can read: UTF-8, no lone surrogate, no NaN or Infinity."""
    text = body.decode("utf-8") if isinstance(body, bytes) else body

    def refuse(literal: str):
        raise AssertionError(f"{literal} in {text[:200]}")

    value = json.loads(text, parse_constant=refuse)
    assert strict_json.problem(value) is None
    return value


def test_hostile_json_breaks_nothing_then_or_later(settings, client, django_user_model):
    settings.API_KEYS = []
    settings.CHANNEL_LAYERS = {}
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    settings.OBSERVABILITY_FLUSH_INTERVAL = 0.05
    settings.OBSERVABILITY_RETRY_SCHEDULE = [0.05]
    api = APIClient()
    agent = LoopbackServer.agent().run_in_thread()
    collector = LoopbackServer.collector().run_in_thread()
    try:
        nodes.register({"id": "analyzer", "base_url": agent.url, "reasoners": [{"id": "process"}]})

        def fresh_execution(status: str = "queued") -> str:
            req = submission.Request(target="analyzer.process", input={})
            execution_id = submission.submit(req, enqueue=False)[0].id
            if status != "queued":
                lifecycle.transition(execution_id, status)
            return execution_id

        @PROPERTY
        @given(bodies(lambda v: {"input": {"document": v}, "context": {"c": v}}) | bodies(lambda v: {"input": v}) | bodies(lambda v: v))
        def submit(body: bytes) -> None:
            post(api, "/api/v1/execute/async/analyzer.process", body)

        @PROPERTY
        @given(st.sampled_from(["running", "succeeded", "failed"]), st.sampled_from(["result", "error", "error_details", "duration_ms", "status_reason"]),
               bodies(lambda v: v))
        def status_callback(status: str, field: str, value: bytes) -> None:
            body = f'{{"status": "{status}", "{field}": '.encode() + value + b"}"
            post(api, f"/api/v1/executions/{fresh_execution('running')}/status", body)

        @PROPERTY
        @given(bodies(lambda v: {"entries": [v, {"message": v, "level": "info"}]}) | bodies(lambda v: {"entries": v}))
        def logs(body: bytes) -> None:
            post(api, f"/api/v1/executions/{fresh_execution('running')}/logs", body)

        @PROPERTY
        @given(st.integers(0, 4), bodies(lambda v: v))
        def register(n: int, value: bytes) -> None:
            body = (
                f'{{"id": "hyp{n}", "base_url": "{agent.url}", "metadata": {{"x": '.encode() + value
                + b'}, "reasoners": [{"id": "r", "input_schema": ' + value + b"}]}"
            )
            post(api, "/api/v1/nodes/register", body)

        @PROPERTY
        @given(bodies(lambda v: {"url": "http://127.0.0.1:9/hook", "description": v, "event_types": ["node.*"], "headers": {"X-A": v}}, odd_text)
               | bodies(lambda v: {"url": v, "event_types": v, "headers": v}))
        def subscribe(body: bytes) -> None:
            post(api, "/api/v1/webhooks/subscriptions", body)

        @PROPERTY
        @given(bodies(lambda v: {"url": collector.url, "headers": {"X-A": v}, "event_types": [v]}, odd_text)
               | bodies(lambda v: {"url": v, "secret": v, "enabled": v}))
        def observability_settings(body: bytes) -> None:
            post(api, "/api/v1/settings/observability-webhook", body)

        for run in (submit, status_callback, logs, register, subscribe, observability_settings):
            run()

        # Afterwards: every read answers, with JSON a client can read.
        for url in ("/api/v1/executions?limit=500", "/api/v1/nodes", "/api/v1/webhooks/subscriptions",
                    "/api/v1/webhooks/dlq", "/api/v1/settings/observability-webhook",
                    "/api/v1/settings/observability-webhook/status", "/api/v1/settings/observability-webhook/dlq"):
            response = api.get(url)
            assert response.status_code == 200, (url, content(response)[:300])
            readable(content(response))
        execution_ids = list(Execution.objects.values_list("id", flat=True))
        for execution_id in execution_ids:
            readable(api.get(f"/api/v1/executions/{execution_id}").content)
        readable(api.post("/api/v1/executions/batch-status", {"execution_ids": execution_ids[:100]}, format="json").content)
        for node_id in AgentNode.objects.values_list("id", flat=True):
            readable(api.get(f"/api/v1/nodes/{node_id}").content)

        client.force_login(django_user_model.objects.create_superuser("ops", "ops@example.com", "pw-for-tests"))
        pages = [f"/admin/{m}/" for m in ("executions/execution", "executions/agentnode", "observability/platformevent",
                                          "webhooks/subscription", "webhooks/delivery", "observability/forwarderconfig",
                                          "observability/forwarderdeadletter")]
        pages += [f"/admin/executions/execution/{quote(i)}/change/" for i in execution_ids[:30]]
        pages += [f"/admin/executions/agentnode/{quote(i)}/change/" for i in AgentNode.objects.values_list("id", flat=True)]
        pages += [f"/admin/webhooks/subscription/{quote(i)}/change/" for i in Subscription.objects.values_list("id", flat=True)[:10]]
        for page in pages + ["/dashboard/"]:
            assert client.get(page).status_code == 200, page

        # The SSE replay of everything: every frame readable.
        expected = PlatformEvent.objects.filter(source__in=("execution", "webhook")).count()

        async def replay() -> list:
            sse = await AsgiSse(application, "/api/ui/v1/executions/events", "last_event_id=0").start()
            try:
                return events_only(await sse.read_events(expected, timeout=30))
            finally:
                await sse.close()

        try:
            frames = asyncio.run(replay())
        finally:
            tail.close_pool_connections()
        assert len(frames) >= expected
        for frame in frames:
            readable(frame.data)

        # The forwarder still delivers a later event.
        assert api.post("/api/v1/settings/observability-webhook", {"url": collector.url}, format="json").status_code == 200
        marker = events.publish("node.online", agent_node_id="after-the-storm")
        runner.run(seconds=20, linger=0)
        assert marker.id in collector.accepted_ids()
        assert configuration.status()["backlog"] == 0
    finally:
        collector.stop()
        agent.stop()
