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
    worker = proc_env.worker()
    wait_for(_holder, timeout=30, what="a sweeper holding the lease")
    started = time.monotonic()
    worker.stop(grace=30)
    # A sweeper that kept to its minute-long run would hold the stop for most of a
    # minute; two django-q clusters wind down in a few seconds on their own.
    assert time.monotonic() - started < 15, worker.log()[-2000:]
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
