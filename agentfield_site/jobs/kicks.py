"""Coalesced kicks: start the job a lease guards unless it runs, once per window across every process.

A kick is a wake-up for a singleton job (the sweeper, the forwarder). Many callers
kick at once (every worker starting, every committed transaction), so the kicks
within `window` seconds count once: the first caller takes the job's kick lease
(`<lease>-kick`, a row in the same table as the job's own lease) and enqueues; the
others find it taken. A lost kick costs latency only: the sweeper ticks catch up.
"""

import uuid
from collections.abc import Callable

from . import leases


def kick_lease(lease: str) -> str:
    """The name of the lease that coalesces kicks of the job holding `lease`."""
    return f"{lease}-kick"


def kick(lease: str, enqueue: Callable[[], None], window: float, *, even_if_running: bool = False) -> bool:
    """Call `enqueue` unless the job holds `lease` (or `even_if_running`) or another kick came within `window` s.

    Returns True when this call enqueued.
    """
    if leases.is_held(lease) and not even_if_running:
        return False
    if not leases.acquire(kick_lease(lease), uuid.uuid4().hex, window):
        return False
    enqueue()
    return True
