"""Request edges in a real daphne: chunked bodies, the access log, the WebSocket Origin."""

import asyncio
import json
import re
import socket
import time

import pytest
import requests
import websockets

from devtools.loopback import LoopbackServer
from devtools.processes import free_port
from devtools.waiting import wait_for
from executions import nodes
from executions.models import Execution

pytestmark = pytest.mark.processes


def test_a_chunked_body_is_read_whole_or_refused_as_too_large(proc_env):
    agent = LoopbackServer.agent().run_in_thread()
    try:
        nodes.register({"id": "analyzer", "base_url": agent.url, "reasoners": [{"id": "process"}]})
        web = proc_env.daphne({"MAX_BODY_BYTES": "4096"})
        url = f"{web.url}/api/v1/execute/async/analyzer.process"
        parts = [b'{"input": ', b'{"document": "sent in ', b'three chunks"}}']
        # A generator body makes requests send Transfer-Encoding: chunked, no Content-Length.
        response = requests.post(url, data=iter(parts), headers={"Content-Type": "application/json"}, timeout=10)
        assert response.status_code == 202, response.text
        assert Execution.objects.get(pk=response.json()["execution_id"]).input == {"document": "sent in three chunks"}

        big = iter([b'{"input": {"document": "', b"x" * 5000, b'"}}'])
        response = requests.post(url, data=big, headers={"Content-Type": "application/json"}, timeout=10)
        assert response.status_code == 413 and response.json()["error"] == "payload_too_large"

        bad = iter([b'{"input": {"document": "c\\ud8', b'00d"}}'])
        response = requests.post(url, data=bad, headers={"Content-Type": "application/json"}, timeout=10)
        assert response.status_code == 400 and response.json()["error"] == "invalid_json"
        assert Execution.objects.count() == 1
    finally:
        agent.stop()


def test_the_access_log_never_shows_an_api_key(proc_env):
    secret = "k-access-log-9f3a7c"
    web = proc_env.daphne({"API_KEYS": secret})
    assert requests.get(f"{web.url}/api/v1/executions?limit=1&api_key={secret}", timeout=10).status_code == 200
    # Not the parameter's name (it is case-sensitive), but logged redacted all the same.
    assert requests.get(f"{web.url}/api/v1/nodes?API_KEY={secret}&x=1", timeout=10).status_code == 401
    # The name percent-encoded (sent as it is: requests would decode it): the query parser
    # reads it as api_key, and the key is good.
    for name in (b"api%5Fkey", b"%61pi_key"):
        request = b"GET /api/v1/executions?" + name + b"=" + secret.encode() + b" HTTP/1.1\r\n"
        answer = _raw(web.port, request + b"Host: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]

    async def socket() -> None:
        async with websockets.connect(f"ws://127.0.0.1:{web.port}/ws/events?api_key={secret}", open_timeout=10) as ws:
            await asyncio.wait_for(ws.recv(), 10)

    asyncio.run(socket())
    web.stop()
    log = web.log()
    assert "GET /api/v1/executions?limit=1&api_key=[redacted]" in log, log[-2000:]
    assert "API_KEY=[redacted]&x=1" in log
    assert "?api%5Fkey=[redacted]" in log and "?%61pi_key=[redacted]" in log
    assert secret not in log


def test_the_access_log_leaves_out_answered_heartbeats_and_keeps_refused_ones(proc_env):
    nodes.register({"id": "analyzer", "base_url": "http://127.0.0.1:9", "reasoners": [{"id": "process"}]})
    web = proc_env.daphne()
    beat = {"status": "ready", "timestamp": "2026-12-07T10:00:00Z"}
    answered = requests.post(f"{web.url}/api/v1/nodes/analyzer/heartbeat", json=beat, timeout=10)
    refused = requests.post(f"{web.url}/api/v1/nodes/nobody/heartbeat", json=beat, timeout=10)
    assert answered.status_code == 200 and refused.status_code == 404, (answered.text, refused.text)
    assert requests.get(f"{web.url}/api/v1/nodes/analyzer", timeout=10).status_code == 200
    web.stop()
    log = web.log()
    assert "GET /api/v1/nodes/analyzer" in log, log[-2000:]  # the log is on
    assert "POST /api/v1/nodes/nobody/heartbeat" in log
    assert "/api/v1/nodes/analyzer/heartbeat" not in log


def test_the_websocket_origin_must_be_the_servers_own(proc_env):
    web = proc_env.daphne()
    url = f"ws://localhost:{web.port}/ws/events"

    async def attempt(origin: str | None) -> str:
        try:
            async with websockets.connect(url, origin=origin, open_timeout=10) as ws:
                return "accepted:" + (await asyncio.wait_for(ws.recv(), 10))[:30]
        except websockets.InvalidStatus as exc:
            return f"refused:{exc.response.status_code}"

    async def scenario() -> dict[str, str]:
        return {
            "own": await attempt(f"http://localhost:{web.port}"),
            "other port": await attempt("http://localhost:1234"),
            "other scheme": await attempt(f"https://localhost:{web.port}"),
            "no origin": await attempt(None),
        }

    got = asyncio.run(scenario())
    assert got["own"].startswith("accepted:") and got["no origin"].startswith("accepted:"), got
    assert got["other port"] == got["other scheme"] == "refused:403", got


def _trickled(port: int, start: bytes, byte: bytes, times: int) -> tuple[bytes, float]:
    """Send `start`, then `byte` every 0.4 s `times` times (each restarts Twisted's idle
    timeout), then read until the server closes: (the answer, seconds from `start`)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(start)
        started = time.monotonic()
        for _ in range(times):
            time.sleep(0.4)
            sock.sendall(byte)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer, time.monotonic() - started


def _raw(port: int, request: bytes) -> bytes:
    """What daphne answers to bytes sent as they are (an HTTP client would refuse to send some)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
            if b"\r\n\r\n" in answer:
                head, _, body = answer.partition(b"\r\n\r\n")
                length = re.search(rb"(?i)content-length: *(\d+)", head)
                if length and len(body) >= int(length.group(1)):
                    break
    return answer



def _answer(sock: socket.socket) -> bytes:
    """One answer read off `sock`, whole by its Content-Length (at most 10 s)."""
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        length = re.search(rb"(?i)content-length: *(\d+)", head)
        if length and len(body) >= int(length.group(1)):
            break
    return answer


def test_a_body_over_the_limit_is_refused_before_it_is_read(proc_env):
    # Twisted read a body whole, to a temporary file and then into memory, before Django
    # could refuse it: with no key, one request made a web process hold 2 GiB.
    web = proc_env.daphne({"MAX_BODY_BYTES": "4096"})
    head = b"POST /api/v1/execute/async/analyzer.process HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: nope\r\n"
    with socket.create_connection(("127.0.0.1", web.port), timeout=10) as sock:
        # 2 GiB announced, 100-continue asked, not a byte of it sent: the answer comes at once.
        sock.sendall(head + b"Content-Length: 2147483648\r\nExpect: 100-continue\r\n\r\n")
        answer = _answer(sock)
    status, _, rest = answer.partition(b"\r\n")
    assert status == b"HTTP/1.1 413 Request Entity Too Large", answer[:300]
    assert json.loads(rest.partition(b"\r\n\r\n")[2])["error"] == "payload_too_large"
    assert b"100 Continue" not in answer

    # A chunked body is refused once past the limit; what follows is dropped, and the
    # connection closes when the body ends. The answer waits for a client that reads late.
    with socket.create_connection(("127.0.0.1", web.port), timeout=10) as sock:
        sock.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n")
        for _ in range(256):  # 256 KiB
            sock.sendall(b"400\r\n" + b" " * 1024 + b"\r\n")
        sock.sendall(b"0\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:300]
    assert answer.endswith(b'"The body is larger than 4096 bytes."}'), answer[-300:]

    assert requests.get(f"{web.url}/health", timeout=10).status_code == 200
    web.stop()
    assert web.log().count('"POST /api/v1/execute/async/analyzer.process" 413') == 2, web.log()[-2000:]


def test_a_body_that_does_not_arrive_in_time_gets_a_408(proc_env):
    # Twisted's idle timeout restarts with every byte: a body sent a byte at a time held
    # its connection (and the request) for as long as its sender liked.
    web = proc_env.daphne({"REQUEST_BODY_TIMEOUT": "1"})
    answer, took = _trickled(web.port, b"POST /api/v1/execute/async/analyzer.process HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                             b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{", b" ", 3)
    assert took < 5
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:300]
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"] == "request_timeout"
    # A body that arrives in time is not cut by the deadline it beat.
    response = requests.post(f"{web.url}/api/v1/execute/async/analyzer.process", json={"input": {}}, timeout=10)
    assert response.status_code == 404, response.text  # no such node: it reached the API
    time.sleep(1.5)
    assert requests.get(f"{web.url}/health", timeout=10).status_code == 200
    assert Execution.objects.count() == 0

def test_what_daphne_refuses_itself_is_a_json_error_under_the_api(proc_env):
    web = proc_env.daphne()
    head = b"Host: 127.0.0.1\r\nConnection: close\r\n"
    bad_header = _raw(web.port, b"GET /api/v1/executions HTTP/1.1\r\n" + head + b"X-Run-ID: run\x0bz\r\n\r\n")
    assert b" 400 " in bad_header.partition(b"\r\n")[0] and b"application/json" in bad_header.lower(), bad_header[:300]
    assert json.loads(bad_header.partition(b"\r\n\r\n")[2]) == {"error": "bad_request", "message": "Invalid header value."}
    # Outside the API, daphne's own page as before.
    page = _raw(web.port, b"GET /admin/ HTTP/1.1\r\n" + head + b"X-Run-ID: run\x0bz\r\n\r\n")
    assert b" 400 " in page.partition(b"\r\n")[0] and b"text/html" in page.lower()
    # A multipart body Twisted could not parse was a bare 400 with no body: the API now answers it.
    sent = b'{"input": {}}'
    multipart = _raw(web.port, b"POST /api/v1/execute/async/analyzer.process HTTP/1.1\r\n" + head
                     + b"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: %d\r\n\r\n" % len(sent) + sent)
    assert b" 415 " in multipart.partition(b"\r\n")[0], multipart[:300]
    assert json.loads(multipart.partition(b"\r\n\r\n")[2])["error"] == "unsupported_media_type"


def test_log_level_warning_keeps_only_the_refused_and_failed_requests_in_the_access_log(proc_env):
    # daphne writes its access lines itself, not through `logging`: LOG_LEVEL=WARNING left every one in.
    web = proc_env.daphne({"LOG_LEVEL": "WARNING"})
    assert requests.get(f"{web.url}/health", timeout=10).status_code == 200
    assert requests.get(f"{web.url}/api/v1/executions/exec_nowhere", timeout=10).status_code == 404
    web.stop()
    log = web.log()
    assert "GET /api/v1/executions/exec_nowhere" in log, log[-2000:]
    assert "GET /health" not in log


def test_twisted_writes_no_access_line_of_its_own(proc_env):
    # daphne's access log is `access_log`'s. Twisted's HTTP server also formatted a line
    # of its own for every request (4 % of a web process's time under the fleet bench)
    # and handed it to its log, which daphne sends nowhere, or with -v 2 to the console:
    # a second line for every request, with the API key a URL carries.
    secret = "k-twisted-log-51e0c2"
    port = free_port()
    web = proc_env.script("daphne", ["-m", "daphne", "-v", "2", "-b", "127.0.0.1", "-p", str(port),
                                     "agentfield_site.asgi:application"], port, {"API_KEYS": secret})
    wait_for(lambda: requests.get(f"{web.url}/health", timeout=1).ok, what=f"daphne on {port}\n{web.log()}")
    assert requests.get(f"{web.url}/api/v1/executions/exec_nowhere?api_key={secret}", timeout=10).status_code == 404
    web.stop()
    log = web.log()
    assert '"GET /api/v1/executions/exec_nowhere?api_key=[redacted]" 404' in log, log[-2000:]  # daphne's line
    assert " HTTP/1.1" not in log, log[-2000:]  # Twisted's combined log format
    assert secret not in log


def test_a_head_request_gets_headers_only_and_the_connection_stays_in_step(proc_env):
    """daphne wrote a streamed answer's body after a HEAD's headers: the next response on
    the connection began inside it (the node list as the status line), and a HEAD on an
    event stream sent events for ever."""
    import http.client

    web = proc_env.daphne()
    nodes.register({"id": "analyzer", "base_url": "http://127.0.0.1:9/", "reasoners": [{"id": "process"}]})
    connection = http.client.HTTPConnection("127.0.0.1", web.port, timeout=10)
    try:
        for path in ("/api/v1/nodes", "/api/ui/v1/executions/events?last_event_id=0", "/health"):
            connection.request("HEAD", path)
            head = connection.getresponse()
            assert head.status == 200 and head.read() == b"", path
            connection.request("GET", "/health")
            after = connection.getresponse()
            assert (after.status, json.loads(after.read())["status"]) == (200, "healthy"), f"after HEAD {path}"
    finally:
        connection.close()
    # A HEAD refused before its body is in (413) still drains that body, as a POST's refusal does.
    with socket.create_connection(("127.0.0.1", web.port), timeout=10) as sock:
        sock.sendall(b"HEAD /api/v1/nodes HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5000000\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 413 ")
        sock.sendall(b"x" * 1000)
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(65536)  # open, reading the rest: not closed at once


def test_headers_that_do_not_arrive_in_time_get_a_408(proc_env):
    """A header sent a byte every 20 s held its connection, with no key, for as long as the sender liked."""
    web = proc_env.daphne({"REQUEST_HEADERS_TIMEOUT": "1"})
    answer, took = _trickled(web.port, b"GET /api/v1/nodes HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: ", b"a", 2)
    assert took < 5
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:300]
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"] == "request_timeout"
    # Headers that arrive in time are not cut by the deadline they beat, on a kept-alive connection either.
    with requests.Session() as session:
        for _ in range(2):
            assert session.get(f"{web.url}/health", timeout=10).status_code == 200
            time.sleep(1.5)
