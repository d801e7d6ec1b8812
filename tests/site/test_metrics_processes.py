"""/metrics on a real daphne counts what a separate qcluster process did (and its own open streams)."""

import pytest
import requests

from devtools.loopback import LoopbackServer
from devtools.waiting import wait_for
from tests.site.test_metrics import samples

pytestmark = pytest.mark.processes
TOKEN = "prometheus-scrape-token"


def _finished(url: str) -> bool:
    return requests.get(url, timeout=2).json()["status"] == "succeeded"


def test_metrics_count_executions_and_deliveries_of_other_processes(proc_env):
    web = proc_env.daphne({"METRICS_TOKEN": TOKEN})
    proc_env.worker()
    agent = proc_env.demo_agent(web.url)
    wait_for(lambda: requests.get(f"{web.url}/api/v1/nodes/analyzer", timeout=2).ok, timeout=30,
             what=f"demo agent registration\n{agent.log()}")
    scrape = lambda: samples(  # noqa: E731
        requests.get(f"{web.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5).text
    )
    assert requests.get(f"{web.url}/metrics", timeout=5).status_code == 401

    with LoopbackServer() as receiver:
        ids = []
        for n in range(3):
            response = requests.post(
                f"{web.url}/api/v1/execute/async/analyzer.process",
                json={"input": {"document": f"doc {n}"}, "webhook": {"url": receiver.url}},
                timeout=5,
            )
            assert response.status_code == 202, response.text
            ids.append(response.json()["execution_id"])
        for execution_id in ids:
            wait_for(lambda eid=execution_id: _finished(f"{web.url}/api/v1/executions/{eid}"), timeout=30,
                     what=f"execution {execution_id}")
        wait_for(lambda: len(receiver.requests) >= 3, timeout=30, what="three webhooks")
        got = wait_for(
            lambda: (m := scrape())[("agentfield_webhook_deliveries_total", (("outcome", "delivered"),))] == 3 and m,
            timeout=15, what="the delivered attempts recorded",
        )
    assert got[("agentfield_executions_total", (("status", "succeeded"),))] == 3
    assert got[("agentfield_executions_total", (("status", "failed"),))] == 0
    assert got[("agentfield_webhook_attempt_duration_seconds_count", ())] == 3
    assert got[("agentfield_webhook_pending", ())] == 0
    assert got[("agentfield_webhook_dead_letters", ())] == 0
    assert got[("agentfield_forwarder_backlog", ())] == 0

    # A stream held open on this daphne shows in its gauge.
    with requests.get(f"{web.url}/api/ui/v1/executions/events", stream=True, timeout=10) as stream:
        assert stream.status_code == 200
        wait_for(lambda: scrape()[("agentfield_stream_connections", ())] == 1, timeout=10, what="the open stream")
