"""The sweeper in a real qcluster: it stops promptly and comes back after a crash."""

import signal
import time

import pytest

from agentfield_site.models import Lease
from devtools.waiting import wait_for

pytestmark = pytest.mark.processes


def _holder() -> str | None:
    from django.utils import timezone

    lease = Lease.objects.filter(name="sweeper", expires_at__gte=timezone.now()).first()
    return lease.holder if lease else None


def test_sigterm_ends_the_sweeper_at_once_and_releases_its_lease(proc_env):
    # A run of 30 s: a stop that waited for the run to end would take most of it.
    worker = proc_env.worker({"SWEEP_RUN_SECONDS": "30"})
    wait_for(_holder, timeout=30, what="a sweeper holding the lease")
    started = time.monotonic()
    worker.stop(grace=40)
    # The run ends at its next tick; two django-q clusters wind down in a second or two.
    assert time.monotonic() - started < 6, worker.log()[-2000:]
    assert worker.popen.returncode != -signal.SIGKILL, "the worker ended on its own"
    assert _holder() is None, "a graceful stop releases the lease"


def test_a_restarted_worker_takes_over_from_a_killed_sweeper(proc_env):
    first = proc_env.worker()
    dead_holder = wait_for(_holder, timeout=30, what="a sweeper holding the lease")
    first.kill()
    second = proc_env.worker()
    # The new worker's start kicks a sweeper that waits out the dead one's lease.
    new_holder = wait_for(
        lambda: (h := _holder()) and h != dead_holder and h,
        timeout=45,
        what=f"a new sweeper after the restart\n{second.log()[-3000:]}",
    )
    assert new_holder != dead_holder


def test_restarts_leave_one_chain_of_sweepers_not_one_more_each(proc_env):
    """Each stop leaves a sweeper task queued, each start kicks one: all but one must end.

    Runs shorter than a lease's patience (1 s against 2 × 2 s) are the case that
    used to keep every extra task alive: it reached its end still waiting and
    queued a successor, until the chains held every delivery worker.
    """
    from django.utils import timezone
    from django_q.models import Task

    env = {"SWEEP_RUN_SECONDS": "1", "SWEEP_LEASE_SECONDS": "2"}
    for _ in range(3):
        worker = proc_env.worker(env)
        wait_for(_holder, timeout=30, what=f"a sweeper holding the lease\n{worker.log()[-2000:]}")
        time.sleep(1.5)  # a run ends and queues its successor
        worker.stop(grace=30)
    worker = proc_env.worker(env)
    wait_for(_holder, timeout=30, what="a sweeper after the last restart")
    time.sleep(6)  # the tasks left queued start, find the live sweeper, and end
    since = timezone.now()
    time.sleep(5)
    results = [t.result for t in Task.objects.filter(name="sweeper", started__gte=since)]
    assert results and all(r > 0 for r in results), (results, worker.log()[-3000:])
    assert len(results) <= 6, results  # one chain of 1 s runs, not several


def test_a_worker_killed_outright_takes_its_clusters_with_it(proc_env):
    """`manage.py worker` no longer becomes the qcluster: killed with SIGKILL, it left its
    clusters running beside the ones its restart started."""
    import os

    from devtools.processes import children_of

    worker = proc_env.worker()
    clusters = wait_for(lambda: (c := children_of(worker.popen.pid)) and len(c) == 2 and c, timeout=30,
                        what="two clusters")
    wait_for(_holder, timeout=30, what="a sweeper holding the lease")
    os.kill(worker.popen.pid, signal.SIGKILL)
    worker.popen.wait(timeout=10)

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_for(lambda: all(gone(pid) for pid in clusters), timeout=30, what=f"the clusters {sorted(clusters)} to stop")
