"""The collector envelope in AgentField's shape: a collector written for AgentField reads it as is."""

import pytest

from devtools.loopback import LoopbackServer
from observability import events
from observability.forwarder import runner
from observability.models import ForwarderDeadLetter
from tests.observability.test_forwarder_delivery import configure

pytestmark = pytest.mark.django_db


def agentfield_collector_reads(event: dict) -> dict:
    """What an AgentField collector takes from one forwarded event."""
    data = event["data"]
    seen = {"type": event["event_type"], "source": event["event_source"], "payload": data["payload"]}
    if event["event_source"] == "execution":
        seen.update(execution=data["execution_id"], workflow=data["workflow_id"], node=data["agent_node_id"],
                    status=data["status"])
    elif event["event_source"] == "node":
        seen.update(node=data["node_id"], status=data["status"], reason=data.get("reason"))
    else:
        seen.update(execution=data.get("execution_id"), status=data.get("status"))
    return seen


def publish_one_of_each() -> None:
    events.publish_many([
        events.build("execution.completed", execution_id="exec_1", workflow_id="run_1", agent_node_id="analyzer",
                     status="succeeded", data={"target": "analyzer.process", "result": {"score": 0.9}}),
        events.build("node.offline", agent_node_id="analyzer", status="inactive",
                     data={"base_url": "http://127.0.0.1:9", "reason": "heartbeat_missed"}),
        events.build("webhook.delivered", execution_id="exec_1", status="delivered",
                     data={"delivery_id": 7, "http_status": 200}),
    ])


def test_execution_node_and_webhook_events_in_agentfield_shape(fast):
    with LoopbackServer.collector() as collector:
        configure(collector.url)
        publish_one_of_each()
        assert runner.run(seconds=10, linger=0) == 3
        [execution, node, webhook] = [agentfield_collector_reads(e) for e in collector.accepted()[0]["events"]]
    assert execution == {
        "type": "execution.completed", "source": "execution", "execution": "exec_1", "workflow": "run_1",
        "node": "analyzer", "status": "succeeded", "payload": {"target": "analyzer.process", "result": {"score": 0.9}},
    }
    assert node == {
        "type": "node.offline", "source": "node", "node": "analyzer", "status": "inactive",
        "reason": "heartbeat_missed", "payload": {"base_url": "http://127.0.0.1:9", "reason": "heartbeat_missed"},
    }
    assert webhook == {
        "type": "webhook.delivered", "source": "webhook", "execution": "exec_1", "status": "delivered",
        "payload": {"delivery_id": 7, "http_status": 200},
    }


def test_dead_letters_keep_the_shape(fast):
    with LoopbackServer.collector(status=400) as collector:
        configure(collector.url)
        publish_one_of_each()
        runner.run(seconds=10, linger=0)
        assert collector.accepted() == []
    entries = forwarder_dlq()
    assert [agentfield_collector_reads(e)["type"] for e in entries] == [
        "execution.completed", "node.offline", "webhook.delivered",
    ]


def forwarder_dlq() -> list[dict]:
    return [row.payload for row in ForwarderDeadLetter.objects.order_by("event_id")]
