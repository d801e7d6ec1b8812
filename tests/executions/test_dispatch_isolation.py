"""An agent that hangs holds its own share of the dispatch threads, never everyone's.

Real worker processes, real loopback agents: one never answers (a hung SDK
process still accepts connections), one is healthy. Before agent calls ran on
threads, six executions to the hung agent took every dispatch worker for a whole
AGENT_CALL_TIMEOUT each, and a healthy execution waited behind them.
"""

import pytest

from devtools.loopback import LoopbackServer
from devtools.waiting import wait_for
from executions import nodes, submission
from executions.models import Execution

pytestmark = pytest.mark.processes

# Calls to the hung agent end by timeout long after the test's checks; the lease outlives them.
WORKER = {"AGENT_CALL_TIMEOUT": "20", "DISPATCH_LEASE_SECONDS": "60", "AGENT_MAX_CALLS_PER_NODE": "2"}


def _submit(target: str) -> Execution:
    return submission.submit(submission.Request(target=target, input={"q": 1}))[0]


def test_a_hung_agent_delays_no_one_else_and_gets_only_its_cap(proc_env, node, agent):
    with LoopbackServer.agent() as hung:
        hung.default.delay = 120
        nodes.register({"id": "hung", "base_url": hung.url, "version": "1", "reasoners": [{"id": "process"}]})
        worker = proc_env.worker(WORKER)
        warm = _submit("analyzer.process")
        wait_for(lambda: Execution.objects.get(pk=warm.id).is_terminal, timeout=30, what=f"a first call\n{worker.log()}")

        stuck = [_submit("hung.process") for _ in range(6)]
        wait_for(lambda: len(hung.requests) == 2, timeout=10, what=f"the hung agent's first calls\n{worker.log()}")
        healthy = [_submit("analyzer.process") for _ in range(5)]
        wait_for(
            lambda: all(row.status == "succeeded" for row in Execution.objects.filter(pk__in=[e.id for e in healthy])),
            timeout=10, what=f"the healthy agent's executions beside the hung one\n{worker.log()}",
        )

        # The hung agent's calls have not timed out yet: the healthy ones did not wait for them.
        assert len(hung.requests) == 2, "at most AGENT_MAX_CALLS_PER_NODE calls to one node at once"
        called = {r.headers["X-Execution-ID"] for r in hung.requests}
        states = {e.id: Execution.objects.get(pk=e.id).dispatch_state for e in stuck}
        assert {i for i, state in states.items() if state == "in_flight"} == called and len(called) == 2
        assert sorted(states.values()) == ["in_flight"] * 2 + ["queued"] * 4
        assert len(agent.requests) == 6


def test_sync_calls_beyond_the_web_processes_call_threads_go_to_a_worker(proc_env, node, agent, monkeypatch):
    """Sync calls to hung agents may take every call thread of a web process: submissions and others' calls go on."""
    import threading

    from rest_framework.test import APIClient

    monkeypatch.setattr(submission, "_calls_free", threading.BoundedSemaphore(1))
    submission._calls_free.acquire()  # the web process's one call thread is busy with a hung agent
    agent.default.body = {"answer": 42}
    worker = proc_env.worker(WORKER)
    response = APIClient().post("/api/v1/execute/analyzer.process", {"input": {"q": 2}}, format="json")
    assert response.status_code == 200, f"{response.content[:300]}\n{worker.log()}"
    assert response.json()["result"] == {"answer": 42}
    assert len(agent.requests) == 1
