"""The soak in its CI size: a few hundred executions through real processes while things break.

The full run is `make soak` (5,000 executions, 20 s receiver outages); see
docs/reliability.md. Both assert the same invariants: nothing lost.
"""

import pytest

from soak.orchestrator import SoakConfig, run_soak

pytestmark = pytest.mark.processes


@pytest.mark.timeout(360)
def test_short_soak_loses_nothing(proc_env):
    report = run_soak(proc_env, SoakConfig.ci())
    print("\n" + report.table())
    assert report.problems() == [], report.table()
    assert report.lost == 0
    assert report.executions == SoakConfig.ci().executions
    assert sum(report.statuses.values()) == report.executions
    assert report.deliveries == report.executions
    # The faults really happened and the machinery really worked through them.
    assert len(report.faults) == 5
    assert report.injected_failures > 0 and report.attempts > report.deliveries
    # Whether an outage outlasts a delivery's short schedule depends on timing; when
    # it does, the redrive must have sent every dead letter again.
    assert report.redriven == report.dead_lettered
    assert report.sse_connections > report.sse_clients, "the SSE clients reconnected"
