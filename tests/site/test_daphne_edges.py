"""Request edges in a real daphne: chunked bodies, the access log, the WebSocket Origin."""

import asyncio

import pytest
import requests
import websockets

from devtools.loopback import LoopbackServer
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

    async def socket() -> None:
        async with websockets.connect(f"ws://127.0.0.1:{web.port}/ws/events?api_key={secret}", open_timeout=10) as ws:
            await asyncio.wait_for(ws.recv(), 10)

    asyncio.run(socket())
    web.stop()
    log = web.log()
    assert "GET /api/v1/executions?limit=1&api_key=[redacted]" in log, log[-2000:]
    assert "API_KEY=[redacted]&x=1" in log
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
