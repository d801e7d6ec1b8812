"""A worker SIGKILLed while it dispatches an execution does not lose it.

The execution row is the queue: the dead worker's dispatch lease lapses, the
sweeper in the next worker hands the execution out again, and it completes.
"""

import pytest

from agentfield_site.jobs import leases, sweeper
from devtools.waiting import wait_for
from executions import submission
from executions.models import Execution
from observability.models import PlatformEvent

pytestmark = pytest.mark.processes


def test_sigkilled_worker_mid_dispatch_loses_nothing(proc_env, node, agent):
    agent.default.delay = 1.5
    agent.default.body = {"answer": 42}
    first = proc_env.worker()
    execution, _ = submission.submit(submission.Request(target="analyzer.process", input={"q": 1}))
    wait_for(lambda: len(agent.requests) == 1, timeout=30, what=f"the first worker to call the agent\n{first.log()}")
    assert Execution.objects.get(pk=execution.id).dispatch_state == Execution.Dispatch.IN_FLIGHT
    first.kill()
    # A supervisor restarts workers after a pause; by then the dead worker's sweeper
    # lease has lapsed, so the new worker's start-up kick starts a sweeper at once.
    wait_for(lambda: not leases.is_held(sweeper.LEASE), timeout=10, what="the dead sweeper's lease to lapse")
    second = proc_env.worker()
    done = wait_for(
        lambda: (row := Execution.objects.get(pk=execution.id)).is_terminal and row,
        timeout=45,
        what=f"the execution to complete after the crash\n{second.log()}",
    )
    assert done.status == "succeeded" and done.result == {"answer": 42}
    assert done.dispatch_attempts == 2
    assert len(agent.requests) == 2
    assert [r.headers["X-Execution-ID"] for r in agent.requests] == [execution.id] * 2
    assert PlatformEvent.objects.filter(execution_id=execution.id, type="execution.started").count() == 1
    assert PlatformEvent.objects.filter(execution_id=execution.id, type="execution.completed").count() == 1
