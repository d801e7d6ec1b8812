"""Coalesced wake-ups: many callers, one queued task per window, across every process.

A kick is a wake-up for a job (the sweeper, the forwarder, the webhook sender).
Many callers kick at once (every worker starting, every committed transaction),
so the kicks within `window` seconds count once: the first caller takes the
kick's lease (a row in the leases table, so the embedded default coalesces
across processes too) and enqueues; the others find it taken. A job that wants
the next kick through at once (it has started, and a row committed from now on
needs a new run) calls `clear`. A lost kick costs latency only: the sweeper
ticks catch up.
"""

import uuid
from collections.abc import Callable

from . import leases


def kick_lease(lease: str) -> str:
    """The name of the lease that coalesces kicks of the job holding `lease`."""
    return f"{lease}-kick"


def coalesced(name: str, enqueue: Callable[[], None], window: float) -> bool:
    """Call `enqueue` unless a call for `name` came within `window` s (and no `clear` since).

    Returns True when this call enqueued.
    """
    if not leases.acquire(name, uuid.uuid4().hex, window):
        return False
    enqueue()
    return True


def clear(name: str) -> None:
    """Let the next `coalesced(name, ...)` through at once."""
    leases.expire(name)


def kick(lease: str, enqueue: Callable[[], None], window: float, *, even_if_running: bool = False) -> bool:
    """Wake the singleton job that holds `lease`: `coalesced`, and not while it runs (unless `even_if_running`).

    Returns True when this call enqueued.
    """
    if leases.is_held(lease) and not even_if_running:
        return False
    return coalesced(kick_lease(lease), enqueue, window)
