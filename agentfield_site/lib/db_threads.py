"""Running ORM code from async code on a bounded pool of long-lived threads.

Such threads live as long as the process, outside any request cycle, so nothing
closes their database connections for them: each call drops a connection that is
broken or past CONN_MAX_AGE before and after it runs (with the default
CONN_MAX_AGE=0, every call opens and closes its own), so a pool of N threads
holds at most N connections, and idle ones none.
"""

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.db import close_old_connections

T = TypeVar("T")


def with_fresh_connection(fn: Callable[..., T], *args: Any) -> T:
    close_old_connections()
    try:
        return fn(*args)
    finally:
        close_old_connections()


async def run_in(pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
    """Run a synchronous (ORM) function on `pool` and await its result."""
    return await sync_to_async(with_fresh_connection, thread_sensitive=False, executor=pool)(fn, *args)
