"""A worker SIGKILLed mid-forwarding loses nothing: the next one resumes from the durable cursor."""

import pytest

from agentfield_site.jobs import leases
from devtools.loopback import LoopbackServer
from devtools.waiting import wait_for
from observability import events
from observability.forwarder import configuration, runner
from observability.models import ForwarderState

WORKER_ENV = {
    "OBSERVABILITY_LEASE_SECONDS": "2",
    "OBSERVABILITY_FLUSH_INTERVAL": "0.2",
    "OBSERVABILITY_CONCURRENCY": "2",
    "OBSERVABILITY_RUN_SECONDS": "20",
}


@pytest.mark.processes
def test_every_event_reaches_the_collector_across_a_worker_crash(proc_env, settings):
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    # A slow collector keeps the forwarder busy long enough to be killed mid-send.
    with LoopbackServer.collector(delay=0.1) as collector:
        configuration.configure(
            url=collector.url, secret="s3cret", headers={}, enabled=True, event_types=["*"]
        )
        ids = [
            e.id
            for e in events.publish_many(
                events.build("execution.log", data={"i": i}) for i in range(300)
            )
        ]

        worker = proc_env.worker(WORKER_ENV)
        wait_for(
            lambda: len(collector.requests) >= 6, timeout=60, what=f"first batches\n{worker.log()}"
        )
        worker.kill()
        before = set(collector.accepted_ids())
        assert len(before) < len(ids), "the worker was killed before it finished"
        cursor_at_kill = ForwarderState.get().cursor
        assert cursor_at_kill < ids[-1]

        # Let the dead worker's lease lapse, then start a fresh one.
        wait_for(lambda: not leases.is_held(runner.LEASE), timeout=10, what="the forwarder lease to lapse")
        worker = proc_env.worker(WORKER_ENV)
        wait_for(
            lambda: set(ids) <= set(collector.accepted_ids()),
            timeout=60,
            what=f"every event after the restart ({len(set(collector.accepted_ids()))} of {len(ids)})\n{worker.log()[-3000:]}",
        )
        received = collector.accepted_ids()
        assert set(received) >= set(ids), "every event id at least once"
        # The new worker resumed from the durable cursor: only events after it (in
        # flight, or acknowledged but not yet saved, at the kill) may come twice.
        twice = {i for i in received if received.count(i) > 1}
        assert all(i > cursor_at_kill for i in twice)
        wait_for(
            lambda: ForwarderState.get().cursor == ids[-1],
            timeout=10,
            what="the cursor to reach the end",
        )
