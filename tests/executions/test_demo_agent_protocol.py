"""The demo agent's side of the protocol against a live server: key, register, report."""

import pytest

from demo_agent.server import ControlPlane, process, run_execution
from executions import dispatch, submission
from executions.models import AgentNode, Execution
from observability.models import PlatformEvent

pytestmark = pytest.mark.django_db(transaction=True)


def test_process_counts_and_summarizes():
    assert process({"document": "one two three"}) == {"summary": "one two three", "words": 3, "document": "one two three"}
    long = process({"document": " ".join(["w"] * 20)})
    assert long["words"] == 20 and long["summary"].endswith("...")


def test_sends_the_api_key_when_keys_are_configured(live_server, settings):
    settings.API_KEYS = ["k1"]
    assert not ControlPlane(live_server.url, "analyzer").register("http://127.0.0.1:1")
    with_key = ControlPlane(live_server.url, "analyzer", api_key="k1")
    assert with_key.register("http://127.0.0.1:1")
    assert with_key.heartbeat() == 200
    assert AgentNode.objects.get(pk="analyzer").reasoner_ids() == ["process"]


def test_reports_like_the_sdk_after_a_202(live_server, node, agent):
    agent.default.status, agent.default.body = 202, {"status": "processing"}
    execution, _ = submission.submit(submission.Request(target="analyzer.process", input={}), enqueue=False)
    dispatch.run(execution.id)
    run_execution(ControlPlane(live_server.url, "analyzer"), execution.id, execution.run_id, {"document": "a b"})
    execution = Execution.objects.get(pk=execution.id)
    assert execution.status == "succeeded"
    assert execution.result == {"summary": "a b", "words": 2, "document": "a b"}
    types = list(PlatformEvent.objects.filter(execution_id=execution.id).values_list("type", flat=True))
    assert types == ["execution.created", "execution.started", "execution.completed", "execution.log"]
