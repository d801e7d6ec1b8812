"""Wait on a condition instead of sleeping a fixed time: every wait is bounded."""

import asyncio
import time
from collections.abc import Awaitable, Callable


def wait_for(
    predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.05,
    what: str | Callable[[], str] = "condition",
):
    """Poll `predicate` until it returns something truthy; TimeoutError after `timeout` seconds.

    `what` names the condition in the error; a callable is called then, to say how things stood at the end.
    """
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - report the last one on timeout
            last_exc = exc
        time.sleep(interval)
    if callable(what):
        what = what()
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}" + (f": {last_exc!r}" if last_exc else ""))


async def wait_for_async(
    predicate: Callable[[], Awaitable[object]], timeout: float = 30.0, interval: float = 0.05, what: str = "condition"
):
    """`wait_for` on an event loop: await `predicate` until truthy; TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(interval)
