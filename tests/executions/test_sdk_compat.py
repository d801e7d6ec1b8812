"""The real `agentfield` SDK from PyPI, unmodified, against real daphne and qcluster processes.

An `Agent` registers and heartbeats; `AgentFieldClient.execute_async` with a
`WebhookConfig` gets an id with `webhook_registered: true`; the SDK's own polling
(`wait_for_execution_result`) ends `succeeded` with the reasoner's result; the
signed completion webhook reaches a receiver on loopback. A reasoner's `app.call`
to another agent goes through the control plane with the agent's own key. Keys
are enforced: the agent holds an agent key, the client a client key (the
scoped-key trust model).
"""

import asyncio
import json

import pytest
import requests
from agentfield.client import AgentFieldClient
from agentfield.types import WebhookConfig
from standardwebhooks import Webhook

from agentfield_site.models import ApiKey
from devtools.loopback import LoopbackServer
from devtools.processes import free_port
from devtools.waiting import wait_for
from executions.models import AgentNode, Execution
from observability.models import PlatformEvent

pytestmark = pytest.mark.processes

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


async def _run_client(base_url: str, target: str, webhook_url: str, api_key: str) -> tuple[str, bool, object]:
    client = AgentFieldClient(base_url=base_url, api_key=api_key)
    try:
        execution_id = await client.execute_async(
            target, {"text": "hello sdk", "repeat": 2}, webhook=WebhookConfig(url=webhook_url, secret=SECRET)
        )
        manager = await client._get_async_execution_manager()
        # What the SDK parsed from the 202 (its ExecutionState), not our own re-reading.
        registered = manager._executions[execution_id].webhook_registered
        result = await client.wait_for_execution_result(execution_id, timeout=30)
        return execution_id, registered, result
    finally:
        await client.close_async_execution_manager()


def _node_events(node_id: str) -> list[tuple]:
    return list(PlatformEvent.objects.filter(agent_node_id=node_id).values_list("timestamp", "type", "data"))


def test_sdk_agent_and_client_round_trip(proc_env):
    agent_key = ApiKey.create("sdk-agent", ApiKey.Scope.AGENT)[1]
    client_key = ApiKey.create("sdk-client", ApiKey.Scope.CLIENT)[1]
    with LoopbackServer() as receiver:
        web = proc_env.daphne()
        proc_env.worker()
        port = free_port()
        agent = proc_env.script("sdk-agent", ["tests/executions/sdk_agent_app.py", str(port), "sdk-node", web.url], port,
                                extra_env={"AGENTFIELD_API_KEY": agent_key})
        node = wait_for(lambda: AgentNode.objects.filter(pk="sdk-node").first(), timeout=30,
                        what=f"the SDK agent to register\n{agent.log()}")
        assert node.kind_of("summarize") == "reasoner"
        assert node.base_url.endswith(f":{port}"), node.base_url
        assert node.owner.name == "sdk-agent"
        first_beat = node.last_heartbeat
        wait_for(lambda: AgentNode.objects.get(pk="sdk-node").last_heartbeat > first_beat, timeout=10,
                 what=f"an SDK heartbeat\n{agent.log()}")

        execution_id, registered, result = asyncio.run(_run_client(web.url, "sdk-node.summarize", receiver.url, client_key))
        assert execution_id.startswith("exec_")
        assert registered is True
        assert result == {"echo": "hello sdkhello sdk", "words": 2}
        doc = requests.get(f"{web.url}/api/v1/executions/{execution_id}", headers={"X-API-Key": client_key},
                           timeout=5).json()
        assert doc["status"] == "succeeded" and doc["webhook_registered"] is True
        execution = Execution.objects.get(pk=execution_id)
        assert execution.dispatch_state == Execution.Dispatch.DONE and execution.owner.name == "sdk-client"
        # `app.note()` in the reasoner: a log entry of this execution (it posted to /executions/note).
        # (The SDK also posts its own log lines there.)
        def notes() -> list[dict]:
            logs = PlatformEvent.objects.filter(type="execution.log", execution_id=execution_id)
            return [e.data["entry"] for e in logs if e.data["entry"].get("kind") == "note"]

        [note] = wait_for(notes, timeout=10, what=f"the reasoner's note\n{agent.log()}")
        assert note["tags"] == ["sdk"] and note["message"] == "summarizing 9 characters"

        hook = wait_for(lambda: receiver.requests and receiver.requests[0], timeout=20,
                        what="the completion webhook")
        headers, body = hook.headers, hook.body
        payload = json.loads(body)
        assert payload["event"] == "execution.completed" and payload["execution_id"] == execution_id
        assert payload["result"] == result
        lower = {k.lower(): v for k, v in headers.items()}
        Webhook(SECRET).verify(body, {k: lower[k] for k in ("webhook-id", "webhook-timestamp", "webhook-signature")})

        # The SDK's blocking call: async submit, then its own GET polling.
        response = AgentFieldClient(base_url=web.url, api_key=client_key).execute_sync(
            "sdk-node.summarize", {"text": "a b c"})
        assert response["status"] == "succeeded" and response["result"] == {"echo": "a b c", "words": 3}

        # app.call from a reasoner, under the agent key: the call belongs to the client's workflow.
        chained = AgentFieldClient(base_url=web.url, api_key=client_key).execute_sync("sdk-node.chain", {"text": "abc"})
        assert chained["status"] == "succeeded", chained
        assert chained["result"] == {"called": {"upper": "ABC"}}, chained
        call = Execution.objects.get(target="sdk-node.upper")
        assert call.parent_execution_id == chained["execution_id"] and call.owner.name == "sdk-client"
        assert call.status == "succeeded"

        agent.stop()
        wait_for(lambda: AgentNode.objects.get(pk="sdk-node").health_status == "inactive", timeout=10,
                 what=lambda: f"the SDK's graceful shutdown notice; node events {_node_events('sdk-node')}\n{agent.log()}")
