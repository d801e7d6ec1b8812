"""The sweeper: one long-running django-q2 task that ticks over time-driven work.

Due retries, expired leases, stale executions, forwarder flushes and retention all
depend on the clock rather than on a request, so something must look at them
regularly. django-q2's scheduler only wakes every 30 s, too coarse for a 5 s retry,
so the scheduled task (every minute) runs a loop of short ticks for most of a
minute. A lease keeps it to one sweeper at a time across every qcluster; if its
process dies the lease lapses and the next kick, schedule or worker start takes over.

Apps add their tick functions to `ticks` in `AppConfig.ready`.
"""

import logging
import os
import time
import uuid
from collections.abc import Callable

from django.conf import settings
from django.db import close_old_connections

from agentfield_site.lib import tasks

from . import kicks, leases, stopping

log = logging.getLogger(__name__)

LEASE = "sweeper"
KICK_LEASE = kicks.kick_lease(LEASE)
# Kicks closer together than this are one kick: a cluster's workers all start
# within milliseconds of each other, a restart takes longer than this.
KICK_DEDUPE_SECONDS = 1.0
TASK = "agentfield_site.jobs.sweeper.run"
ticks: list[Callable[[], None]] = []


def run(seconds: float | None = None) -> int:
    """Hold the sweeper lease and tick for `seconds` from taking it; returns ticks run.

    Runs are short (SWEEP_RUN_SECONDS) and chained, because a graceful qcluster
    stop waits for running tasks: a short run keeps that wait short, and a run
    ends at its next tick once a stop is requested (`stopping`). Only a run
    that held the lease queues the next one: a task that finds another sweeper
    (queued before a restart, or kicked by a starting worker) ends without one,
    or every restart would add a chain of sweepers that never ends.
    """
    seconds = settings.SWEEP_RUN_SECONDS if seconds is None else seconds
    holder = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    deadline: float | None = None  # set once the lease is ours
    count = 0
    seen = None  # the lease as another holder had it when this run first looked
    waiting_since = time.monotonic()
    while (deadline is None or time.monotonic() < deadline) and not stopping.requested():
        if not leases.acquire(LEASE, holder, settings.SWEEP_LEASE_SECONDS):
            if count:
                return count  # another sweeper took over after we stalled; it carries on
            # A live sweeper renews the lease every tick; one killed a moment ago
            # leaves it to lapse. Leave the live one alone (it hands over itself),
            # wait the dead one's lease out and take over (with a bound, in case
            # the holder stalls without dying).
            now_seen = leases.state(LEASE)
            seen = seen or now_seen
            if now_seen != seen or time.monotonic() - waiting_since > 2 * settings.SWEEP_LEASE_SECONDS:
                return 0
            time.sleep(settings.SWEEP_TICK_SECONDS)
            continue
        if deadline is None:
            deadline = time.monotonic() + seconds
        tick_once()
        count += 1
        close_old_connections()
        time.sleep(settings.SWEEP_TICK_SECONDS)
    if deadline is None:
        return 0  # stopped before the lease was ours: no successor from a run that never held it
    leases.release(LEASE, holder)
    # Hand over to one successor at once rather than waiting for the minute schedule.
    _enqueue()
    return count


def tick_once() -> None:
    """Run every registered tick; one failing tick does not stop the others."""
    for tick in ticks:
        try:
            tick()
        except Exception:
            log.exception("sweeper tick %s failed", getattr(tick, "__qualname__", tick))


def kick(*, after_restart: bool = False) -> None:
    """Start a sweeper task unless one runs; kicks within KICK_DEDUPE_SECONDS count once.

    `after_restart`: a worker just started, so a live-looking lease may belong to a
    process that was killed; the new task waits that lease out (see `run`).
    """
    kicks.kick(LEASE, _enqueue, KICK_DEDUPE_SECONDS, even_if_running=after_restart)


def _enqueue() -> None:
    tasks.enqueue(TASK, cluster=settings.DELIVERY_CLUSTER, name="sweeper", timeout=settings.Q_CLUSTER["timeout"])


def ensure_schedule() -> None:
    """The minute schedule that restarts the sweeper whenever none runs."""
    from django_q.models import Schedule

    Schedule.objects.update_or_create(
        name="sweeper",
        defaults={"func": "agentfield_site.jobs.sweeper.kick", "schedule_type": Schedule.MINUTES, "minutes": 1, "repeats": -1},
    )
