"""An agent's answer that strict JSON refuses fails the execution as `bad_response`
(a 200) or `agent_error` (an error status), quoted back: the sync call answers 502,
never 500, and nothing is dispatched again."""

from datetime import timedelta

import pytest
from django.utils import timezone

from executions import dispatch
from executions.models import Execution

pytestmark = pytest.mark.django_db(transaction=True)

POISON = [
    b'{"a":NaN}',
    b'{"a":Infinity}',
    b'{"a":1e400}',
    b'{"a":"\\ud800"}',
    b'{"\\udfff":1}',
    b'{"a":"\\u0000x"}',
    b'{"a":"\x00"}',
    b"[" * 5000,
    b"[" * 5000 + b"]" * 5000,
]


def execute(api) -> tuple[dict, Execution]:
    response = api.post("/api/v1/execute/analyzer.process", {"input": {}}, format="json")
    assert response.status_code == 502, response.content[:500]
    body = response.json()
    return body, Execution.objects.get(pk=body["execution_id"])


def assert_not_dispatched_again(agent, execution: Execution) -> None:
    Execution.objects.filter(pk=execution.pk).update(dispatch_lease_until=timezone.now() - timedelta(hours=1))
    assert dispatch.requeue_lapsed() == 0
    assert len(agent.requests) == 1


@pytest.mark.parametrize("body", POISON, ids=lambda b: repr(b[:20]))
def test_a_200_that_strict_json_refuses_is_a_bad_response(api, node, agent, body):
    agent.default.status, agent.default.body = 200, body
    doc, execution = execute(api)
    assert doc["status"] == "failed" and doc["error_category"] == "bad_response"
    assert execution.status == "failed" and execution.result is None
    assert execution.error_details["http_status"] == 200
    assert "not valid JSON" in execution.error
    assert_not_dispatched_again(agent, execution)


@pytest.mark.parametrize("body", [b"[" * 3000, b'{"error":"\\ud800"}', b'{"error":"a\x00b"}', b"boom\x00"],
                         ids=lambda b: repr(b[:20]))
def test_an_error_answer_that_strict_json_refuses_is_quoted_back(api, node, agent, body):
    agent.default.status, agent.default.body = 500, body
    doc, execution = execute(api)
    assert doc["status"] == "failed" and doc["error_category"] == "agent_error"
    assert execution.error.startswith("The agent answered 500: ")
    assert "\x00" not in execution.error and "\x00" not in execution.error_details["body"]
    assert execution.error_details["body"].startswith(body[:10].decode().replace("\x00", "\ufffd"))
    assert_not_dispatched_again(agent, execution)
