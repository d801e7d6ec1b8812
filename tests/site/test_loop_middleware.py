"""Under ASGI, Django's middleware runs as its on-the-loop subclasses and still does its job.

Driven through the real ASGI application (as daphne calls it), not the test client,
which runs Django's own classes.
"""

import asyncio

import pytest

from agentfield_site import asgi
from agentfield_site.lib import loop_middleware

pytestmark = pytest.mark.django_db(transaction=True)


def _get(path: str) -> dict:
    """One GET through the ASGI application: {status, headers, body}."""

    async def run() -> dict:
        sent: list[dict] = []
        requested = False

        async def receive() -> dict:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await asyncio.sleep(30)
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
                 "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
                 "headers": [(b"host", b"localhost")], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
        await asyncio.wait_for(asgi.application(scope, receive, send), timeout=10)
        start = next(m for m in sent if m["type"] == "http.response.start")
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        return {"status": start["status"], "headers": start["headers"], "body": body}

    return asyncio.run(run())


def _headers(response: dict) -> dict[bytes, list[bytes]]:
    found: dict[bytes, list[bytes]] = {}
    for name, value in response["headers"]:
        found.setdefault(name.lower(), []).append(value)
    return found


def test_the_asgi_handler_loads_the_loop_subclasses_and_the_names_stay_djangos(settings):
    assert "django.middleware.security.SecurityMiddleware" in settings.MIDDLEWARE
    chain, handler = [], asgi.django_asgi_app._middleware_chain
    # convert_exception_to_response wraps each instance; walk its closure to list them.
    while handler is not None:
        instance = next((c.cell_contents for c in (handler.__closure__ or ()) if hasattr(c.cell_contents, "get_response")),
                        None)
        if instance is None:
            break
        chain.append(type(instance))
        handler = instance.get_response
    assert set(loop_middleware.ON_THE_LOOP.values()) <= set(chain), chain


def test_security_headers_and_the_health_answer():
    response = _get("/health")
    assert response["status"] == 200
    headers = _headers(response)
    assert headers[b"x-content-type-options"] == [b"nosniff"]
    assert headers[b"x-frame-options"] == [b"DENY"]
    assert headers[b"referrer-policy"] == [b"same-origin"]


def test_the_admin_page_gets_its_csrf_cookie_and_content_security_policy():
    response = _get("/admin/login/")
    assert response["status"] == 200
    headers = _headers(response)
    assert any(cookie.startswith(b"csrftoken=") for cookie in headers[b"set-cookie"])
    assert headers[b"content-security-policy"]


def test_a_static_file_is_still_served():
    response = _get("/static/admin/css/base.css")
    assert response["status"] == 200
    assert b"body" in response["body"]


def test_an_unknown_api_route_is_a_json_404():
    response = _get("/api/v1/nope")
    assert response["status"] == 404
    assert _headers(response)[b"content-type"] == [b"application/json"]


def test_the_handlers_bookkeeping_runs_on_the_loop_and_a_views_thread_sensitive_call_on_a_pool(monkeypatch):
    """The request signals and `response.close` inline (no hop); what a view, a hook or the sending hands over, on a hop thread."""
    import threading

    from django.core.signals import request_finished, request_started

    seen: dict[str, str] = {}

    def started(**kwargs) -> None:
        seen["request_started"] = threading.current_thread().name

    def finished(**kwargs) -> None:
        seen["request_finished"] = threading.current_thread().name

    serve = loop_middleware.WhiteNoiseMiddleware.serve

    def serving(static_file, request):
        seen["static file"] = threading.current_thread().name
        response = serve(static_file, request)
        content = response.streaming_content

        def body():
            seen["static body"] = threading.current_thread().name
            yield from content

        response.streaming_content = body()
        return response

    monkeypatch.setattr(loop_middleware.WhiteNoiseMiddleware, "serve", staticmethod(serving))
    request_started.connect(started)
    request_finished.connect(finished)
    try:
        assert _get("/static/admin/css/base.css")["status"] == 200
    finally:
        request_started.disconnect(started)
        request_finished.disconnect(finished)
    loop_thread = threading.current_thread().name  # asyncio.run runs the loop in this thread
    assert seen["request_started"] == seen["request_finished"] == loop_thread
    assert seen["static file"].startswith("request-hop"), seen
    assert seen["static body"].startswith("request-hop"), seen  # read while sent: still off the loop


@pytest.mark.parametrize("route", ["health", "heartbeat"])
def test_a_request_on_a_hot_path_leaves_no_cycle_behind(route):
    """Nothing of a request to `/health` or through the fast lane waits for the cyclic collector,
    whose full passes stalled the loop for 30-65 ms every two seconds under load. Daphne sends
    `http.disconnect` once a response is complete, which Django's handler raised as
    `RequestAborted`, whose traceback tied the handler's frame and task into a cycle; and the
    authentication and messages middleware hang objects on the request that hold the request.
    (DRF's views and the admin's forms make cycles of their own: not on these paths.)"""
    import gc

    from django.core.exceptions import RequestAborted
    from django.core.handlers.asgi import ASGIRequest

    from agentfield_site.auth import Caller
    from agentfield_site.models import ApiKey
    from executions import nodes

    if route == "health":
        method, path, body, headers = "GET", "/health", b"", []
    else:
        agent, raw = ApiKey.create("agent", ApiKey.Scope.AGENT)
        nodes.register({"id": "writer", "base_url": "http://localhost:8001"}, Caller(ApiKey.Scope.AGENT, agent.pk, agent.name))
        method, path, body = "POST", "/api/v1/nodes/writer/heartbeat", b'{"status": "ready"}'
        headers = [(b"x-api-key", raw.encode()), (b"content-type", b"application/json")]

    async def run() -> int:
        sent: list[dict] = []
        incoming = [{"type": "http.request", "body": body, "more_body": False}]
        answered = asyncio.Event()

        async def receive() -> dict:
            if incoming:
                return incoming.pop(0)
            await answered.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                answered.set()

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
                 "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
                 "headers": [(b"host", b"localhost"), *headers], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
        await asyncio.wait_for(asgi.application(scope, receive, send), timeout=10)
        return next(m for m in sent if m["type"] == "http.response.start")["status"]

    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        assert asyncio.run(run()) == 200
        gc.collect()
        left = [type(o).__name__ for o in gc.garbage if isinstance(o, RequestAborted | ASGIRequest)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert left == []
