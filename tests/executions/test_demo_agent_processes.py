"""The embedded default with real processes: daphne, a qcluster and the demo agent."""

import pytest
import requests

from devtools.waiting import wait_for
from executions.models import AgentNode
from observability.models import PlatformEvent

pytestmark = pytest.mark.processes


def _status(url: str) -> dict | None:
    doc = requests.get(url, timeout=2).json()
    return doc if doc["status"] in ("succeeded", "failed", "cancelled", "timeout") else None


def test_curl_async_submit_succeeds_on_the_demo_agent(proc_env):
    web = proc_env.daphne()
    proc_env.worker()
    agent = proc_env.demo_agent(web.url)
    wait_for(lambda: requests.get(f"{web.url}/api/v1/nodes/analyzer", timeout=2).ok, timeout=20,
             what=f"demo agent registration\n{agent.log()}")
    response = requests.post(
        f"{web.url}/api/v1/execute/async/analyzer.process",
        data=b'{"input":{"document":"hello brave new world"}}',
        headers={"Content-Type": "application/json"},
        timeout=5,
    )
    assert response.status_code == 202, response.text
    execution_id = response.json()["execution_id"]
    doc = wait_for(lambda: _status(f"{web.url}/api/v1/executions/{execution_id}"), timeout=30,
                   what="the execution to finish")
    assert doc["status"] == "succeeded", doc
    assert doc["result"] == {"summary": "hello brave new world", "words": 4, "document": "hello brave new world"}
    # The agent protocol as the SDK speaks it: 202, running event, callback, logs.
    wait_for(lambda: PlatformEvent.objects.filter(type="execution.log", execution_id=execution_id).exists(),
             timeout=10, what="the agent's logs")
    types = list(PlatformEvent.objects.filter(execution_id=execution_id).values_list("type", flat=True))
    assert types[:3] == ["execution.created", "execution.started", "execution.completed"]
    wait_for(lambda: AgentNode.objects.get(pk="analyzer").last_heartbeat > AgentNode.objects.get(pk="analyzer").registered_at,
             timeout=10, what="a heartbeat")
    agent.stop()
    wait_for(lambda: AgentNode.objects.get(pk="analyzer").health_status == "inactive", timeout=10,
             what="shutdown marks the node offline")


def test_with_keys_the_demo_agent_runs_on_its_own_agent_key(proc_env):
    """What `make run` does: serve hands the demo agent an agent key of its own; a client key submits."""
    from agentfield_site.auth import check_key, keys_required
    from agentfield_site.management.commands.serve import Command
    from agentfield_site.models import ApiKey

    stale = Command()._demo_agent_key()["AGENTFIELD_API_KEY"]
    assert not keys_required(), "the demo agent's own key leaves the API open"
    client_key = ApiKey.create("tour", ApiKey.Scope.CLIENT)[1]
    agent_key = Command()._demo_agent_key()["AGENTFIELD_API_KEY"]
    assert check_key(stale) is None, "each run reissues the same row with a fresh secret"
    assert ApiKey.objects.filter(name="demo-agent", scope=ApiKey.Scope.AGENT, demo=True).count() == 1
    web = proc_env.daphne()
    proc_env.worker()
    agent = proc_env.demo_agent(web.url, extra_env={"AGENTFIELD_API_KEY": agent_key})
    node = wait_for(lambda: AgentNode.objects.filter(pk="analyzer").first(), timeout=20,
                    what=f"demo agent registration\n{agent.log()}")
    assert node.owner.name == "demo-agent"
    headers = {"X-API-Key": client_key}
    response = requests.post(f"{web.url}/api/v1/execute/async/analyzer.process",
                             json={"input": {"document": "own keys"}}, headers=headers, timeout=5)
    assert response.status_code == 202, response.text
    url = f"{web.url}/api/v1/executions/{response.json()['execution_id']}"
    doc = wait_for(lambda: (d := requests.get(url, headers=headers, timeout=2).json())["status"] == "succeeded" and d,
                   timeout=30, what="the execution to succeed through the agent's own key")
    assert doc["result"]["words"] == 2
