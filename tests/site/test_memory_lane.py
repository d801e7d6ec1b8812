"""`MemoryLane`: a heartbeat answered from memory before Django is the answer Django gives.

Through the project's real ASGI application (`agentfield_site.asgi`), as daphne
calls it: the first beat of a node goes through Django (which remembers the key
and the node, and whose 200 the lane learns the headers of); the next ones are
answered on the event loop, with no thread hop. `on_request_thread` counts what
went through Django's fast lane.
"""

import asyncio
import json
import threading

import pytest
from asgiref.sync import sync_to_async
from django.db import connections

from agentfield_site import fast_lane
from agentfield_site.asgi import application
from agentfield_site.auth import Caller
from agentfield_site.fast_lane import MemoryLane
from agentfield_site.models import ApiKey
from executions import nodes
from executions.models import AgentNode

pytestmark = pytest.mark.django_db(transaction=True)

BEAT = "/api/v1/nodes/writer/heartbeat"


@pytest.fixture(autouse=True)
def _nothing_learned():
    """As a process that has answered nothing yet."""
    fast_lane._learned.clear()
    yield
    fast_lane._learned.clear()


@pytest.fixture
def agent_key() -> str:
    agent, raw = ApiKey.create("agent", ApiKey.Scope.AGENT)
    nodes.register(
        {"id": "writer", "base_url": "http://localhost:8001", "reasoners": [{"id": "draft"}]},
        Caller(ApiKey.Scope.AGENT, agent.pk, agent.name),
    )
    nodes._written.clear()  # as a process that has not seen the node yet
    return raw


@pytest.fixture
def through_django(monkeypatch) -> list[str]:
    """The paths Django's fast lane took (a thread hop each)."""
    seen: list[str] = []
    original = fast_lane.on_request_thread

    def counting(request, *args):
        seen.append(request.path)
        return original(request, *args)

    monkeypatch.setattr(fast_lane, "on_request_thread", counting)
    return seen


Headers = dict[str, str] | list[tuple[str, str]]


async def _call(app, path: str, body: bytes, headers: Headers, chunk: int = 0,
                server: tuple[str, int] = ("127.0.0.1", 8080)) -> tuple[int, dict, bytes]:
    """One HTTP request through an ASGI app, as daphne makes it; `chunk` splits the body into messages.

    The answer's headers come back as a dict by lower-cased name, in the order sent.
    """
    pairs = [*(headers.items() if isinstance(headers, dict) else headers), ("Content-Length", str(len(body)))]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in pairs],
        "client": ("127.0.0.1", 50000), "server": server,
    }
    size = chunk or max(1, len(body))
    incoming = [
        {"type": "http.request", "body": body[i : i + size], "more_body": i + size < len(body)}
        for i in range(0, max(1, len(body)), size)
    ]
    sent: list[dict] = []

    async def receive() -> dict:
        if incoming:
            return incoming.pop(0)
        await asyncio.Event().wait()  # no disconnect while the request is being answered

    async def send(message: dict) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    content = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode().lower(): v.decode() for k, v in start["headers"]}, content


def _beats(*requests: tuple[bytes, dict[str, str]]) -> list[tuple[int, dict, bytes]]:
    """The requests, one after another on one event loop (which keeps the beat flusher)."""

    async def run() -> list:
        answers = [await _call(application, BEAT, body, headers) for body, headers in requests]
        await sync_to_async(nodes.flush_beats)()
        return answers

    try:
        return asyncio.run(run())
    finally:
        asyncio.run(sync_to_async(connections.close_all)())


def _headers(key: str, host: str = "localhost:8080") -> dict[str, str]:
    return {"Host": host, "X-API-Key": key, "Content-Type": "application/json"}


def test_a_beat_from_memory_is_the_answer_django_gives(agent_key, through_django):
    body = json.dumps({"status": "ready"}).encode()
    first, second, third = _beats(*[(body, _headers(agent_key))] * 3)
    assert through_django == [BEAT], "only the first beat went through Django"
    for status, headers, content in (second, third):
        assert status == first[0] == 200
        assert list(headers) == list(first[1]), "the same headers, in Django's order"
        assert {k: v for k, v in headers.items() if k != "content-length"} == {
            k: v for k, v in first[1].items() if k != "content-length"
        }
        assert int(headers["content-length"]) == len(content)
        assert json.loads(content).keys() == json.loads(first[2]).keys()
        assert json.loads(content)["message"] == "heartbeat received"
    assert first[1]["x-frame-options"] == "DENY" and first[1]["x-content-type-options"] == "nosniff"
    # The beats from memory were written in a batch, not ahead of when they came.
    assert AgentNode.objects.get(pk="writer").last_heartbeat.isoformat().replace("+00:00", "Z") <= json.loads(third[2])["timestamp"]


def test_what_django_refuses_is_never_answered_from_memory(agent_key, through_django):
    body = json.dumps({"status": "ready"}).encode()
    _, client_raw = ApiKey.create("client", ApiKey.Scope.CLIENT)
    learned, other_host, wrong_scope, made_up = _beats(
        (body, _headers(agent_key)),
        (body, _headers(agent_key, host="attacker.example")),  # Django's ALLOWED_HOSTS refuses it
        (body, _headers(client_raw)),
        (body, _headers("made-up")),
    )
    assert learned[0] == 200
    assert other_host[0] == 400
    assert wrong_scope[0] == 403 and json.loads(wrong_scope[2])["error"] == "forbidden"
    assert made_up[0] == 401
    # Every one went to Django (the other Host's refused by its middleware, before the view).
    assert len(through_django) == 3


def test_a_beat_memory_cannot_answer_reaches_django_with_its_body(agent_key, through_django):
    """A new status is written at once: the lane read the body, and hands it on whole (in chunks, too)."""

    async def run() -> list:
        first = await _call(application, BEAT, b'{"status": "ready"}', _headers(agent_key))
        changed = await _call(application, BEAT, b'{"status": "busy", "version": "2.0.0"}', _headers(agent_key), chunk=5)
        return [first, changed]

    try:
        first, changed = asyncio.run(run())
    finally:
        asyncio.run(sync_to_async(connections.close_all)())
    assert first[0] == changed[0] == 200
    assert len(through_django) == 2
    assert AgentNode.objects.get(pk="writer").lifecycle_status == "busy"


def test_a_large_body_is_parsed_off_the_event_loop(agent_key, parses):
    """A remembered key's beat is answered on the loop; its body is parsed there only when small."""
    small = b'{"status": "ready"}'
    big = b'{"status": "ready", "pad": [' + b"[]," * 20_000 + b"[]]}"
    answers = _beats((small, _headers(agent_key)), (small, _headers(agent_key)), (big, _headers(agent_key)))
    assert [status for status, _, _ in answers] == [200, 200, 200]
    loop_thread = threading.main_thread().name
    assert parses[1] == loop_thread, "the small beat from memory was parsed on the loop"
    assert parses[2] != loop_thread, "the large one on a request thread"


def test_a_made_up_keys_body_is_never_parsed(agent_key, parses):
    big = b'{"status": "ready", "pad": [' + b"[]," * 20_000 + b"[]]}"
    answers = _beats((b'{"status": "ready"}', _headers(agent_key)), (big, _headers("made-up")))
    assert [status for status, _, _ in answers] == [200, 401]
    assert len(parses) == 1


def test_a_response_that_sets_a_cookie_is_not_learned(agent_key):
    """Headers are learned from Django's 200 only when they carry nothing of one caller's (a cookie)."""
    calls = []

    async def django(scope, receive, send):
        calls.append(scope["path"])
        await receive()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"set-cookie", b"sessionid=someone")]})
        await send({"type": "http.response.body", "body": b"{}"})

    lane = MemoryLane(django)
    # The key is remembered and the node known, as after a beat through Django.
    assert _beats((b'{"status": "ready"}', _headers(agent_key)))[0][0] == 200
    fast_lane._learned.clear()  # but nothing learned from Django's own answer

    async def run() -> list:
        return [await _call(lane, BEAT, b'{"status": "ready"}', _headers(agent_key)) for _ in range(2)]

    answers = asyncio.run(run())
    assert len(calls) == 2, "nothing learned: both went to the app behind the lane"
    assert all(headers.get("set-cookie") == "sessionid=someone" for _, headers, _ in answers)


def test_only_answers_to_plain_requests_are_learned(agent_key, through_django):
    """DRF renders `Accept: application/json; indent=4` its own way: that answer's headers are not learned."""
    body = b'{"status": "ready"}'
    indented, plain, from_memory = _beats(
        (body, {**_headers(agent_key), "Accept": "application/json; indent=4"}),
        (body, _headers(agent_key)),
        (body, _headers(agent_key)),
    )
    assert indented[0] == plain[0] == from_memory[0] == 200
    assert len(through_django) == 2, "the plain answer was learned, not the indented one"
    assert from_memory[1]["content-type"] == plain[1]["content-type"] == "application/json"


def test_a_request_without_a_host_is_judged_by_the_address_it_came_to(agent_key, through_django):
    """Without a Host header Django validates the address the request came to: one learned on an
    allowed address says nothing of another."""
    body = b'{"status": "ready"}'
    plain = [("X-API-Key", agent_key), ("Content-Type", "application/json")]

    async def run() -> list:
        return [
            await _call(application, BEAT, body, plain, server=("127.0.0.1", 8080)),
            await _call(application, BEAT, body, plain, server=("127.0.0.1", 8080)),
            await _call(application, BEAT, body, plain, server=("10.9.8.7", 8080)),
        ]

    try:
        learned, from_memory, elsewhere = asyncio.run(run())
    finally:
        asyncio.run(sync_to_async(connections.close_all)())
    assert learned[0] == from_memory[0] == 200
    assert elsewhere[0] == 400, "Django refuses an address outside ALLOWED_HOSTS"
    assert len(through_django) == 1


def test_the_port_and_case_of_the_host_name_are_one_entry(agent_key, through_django):
    """Django validates the domain alone: `localhost:1` and `LOCALHOST:2` are answered alike, and
    a flood of ports cannot push the real Host name out of what was learned."""
    body = b'{"status": "ready"}'
    answers = _beats(*[(body, _headers(agent_key, host=host)) for host in ("localhost:8080", "localhost:1", "LOCALHOST.:2")])
    assert [status for status, _, _ in answers] == [200, 200, 200]
    assert len(through_django) == 1


def test_repeated_proxy_headers_are_judged_in_their_order(agent_key, through_django, settings):
    """Django reads the first of repeated `X-Forwarded-Proto` values: `https, http` is secure and
    `http, https` is not, so one learned answer says nothing of the other."""
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    body = b'{"status": "ready"}'
    secure = [*_headers(agent_key).items(), ("X-Forwarded-Proto", "https"), ("X-Forwarded-Proto", "http")]
    reversed_ = [*_headers(agent_key).items(), ("X-Forwarded-Proto", "http"), ("X-Forwarded-Proto", "https")]
    answers = _beats((body, secure), (body, secure), (body, reversed_))
    assert [status for status, _, _ in answers] == [200, 200, 200]
    assert len(through_django) == 2, "the reversed order went to Django"


def test_a_body_over_max_body_bytes_is_refused_by_django(agent_key, settings):
    settings.MAX_BODY_BYTES = 64
    small = b'{"status": "ready"}'
    padded = b'{"status": "ready", "pad": "' + b"x" * 200 + b'"}'
    answers = _beats((small, _headers(agent_key)), (small, _headers(agent_key)), (padded, _headers(agent_key)))
    assert [status for status, _, _ in answers] == [200, 200, 413]
    assert json.loads(answers[2][2])["error"] == "payload_too_large"
