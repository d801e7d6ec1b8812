"""The request limit in a real daphne: open streams hold no place, and a crowd is served in turn.

The limit's own rules are in tests/lib/test_concurrency_limit.py; here it is the
process `make run` and production start, with one place only.
"""

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

pytestmark = pytest.mark.processes


def test_open_streams_hold_no_place_and_a_crowd_is_served_in_turn(proc_env):
    web = proc_env.daphne({"MAX_CONCURRENT_REQUESTS": "1"})
    streams = [
        requests.get(f"{web.url}/api/ui/v1/executions/events", stream=True, timeout=(5, 30)) for _ in range(3)
    ]
    try:
        assert [s.status_code for s in streams] == [200, 200, 200]
        assert all(s.headers["Content-Type"].startswith("text/event-stream") for s in streams)

        def list_executions(_: int) -> int:
            return requests.get(f"{web.url}/api/v1/executions", timeout=30).status_code

        with ThreadPoolExecutor(max_workers=24) as pool:
            statuses = list(pool.map(list_executions, range(48)))
        assert statuses == [200] * 48
    finally:
        for stream in streams:
            stream.close()


def test_sync_executes_waiting_for_their_agent_hold_no_place(proc_env):
    """64 sync executes wait on an agent that accepts (202) and does not report, with 4 places:
    /health and an async submit still answer within a second; when the agent reports, each caller
    gets its result."""
    from devtools.loopback import LoopbackServer
    from devtools.waiting import wait_for
    from executions import nodes
    from executions.models import Execution

    agent = LoopbackServer.agent().run_in_thread()
    agent.default.status, agent.default.body = 202, {"status": "processing"}
    try:
        nodes.register({"id": "silent", "base_url": agent.url, "reasoners": [{"id": "process"}]})
        web = proc_env.daphne({"MAX_CONCURRENT_REQUESTS": "4", "AGENT_CALL_TIMEOUT": "120"})

        def execute_sync(i: int) -> requests.Response:
            return requests.post(f"{web.url}/api/v1/execute/silent.process", json={"input": {"i": i}}, timeout=180)

        def early(futures) -> list[str]:
            return [f"{f.result().status_code} {f.result().text[:200]}" for f in futures if f.done()]

        with ThreadPoolExecutor(max_workers=64) as pool:
            waiting = [pool.submit(execute_sync, i) for i in range(64)]
            wait_for(lambda: len(agent.requests) == 64, timeout=60,
                     what=f"all 64 calls to reach the agent ({len(agent.requests)} so far)")
            assert not early(waiting), "a sync caller was answered before its agent reported"
            latencies = {}
            for name, call in (
                ("health", lambda: requests.get(f"{web.url}/health", timeout=5)),
                ("async submit", lambda: requests.post(f"{web.url}/api/v1/execute/async/silent.process",
                                                       json={"input": {}}, timeout=5)),
                ("health again", lambda: requests.get(f"{web.url}/health", timeout=5)),
            ):
                started = time.monotonic()
                response = call()
                latencies[name] = time.monotonic() - started
                assert response.status_code in (200, 202), (name, response.status_code, response.text)
            assert not early(waiting), "the probes ran while every sync caller was waiting"
            assert max(latencies.values()) < 1.0, latencies
            # Now the agent reports: every waiting caller gets its own result.
            running = list(Execution.objects.filter(status="running").values_list("id", "input"))
            assert len(running) == 64
            for execution_id, payload in running:
                callback = requests.post(f"{web.url}/api/v1/executions/{execution_id}/status",
                                         json={"status": "succeeded", "result": payload}, timeout=30)
                assert callback.status_code == 200, callback.text
            answers = [f.result() for f in waiting]
        assert [a.status_code for a in answers] == [200] * 64
        assert sorted(a.json()["result"]["i"] for a in answers) == list(range(64))
    finally:
        agent.stop()
