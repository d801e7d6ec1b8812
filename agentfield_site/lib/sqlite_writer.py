"""One SQLite writer at a time in this process, queued on a lock rather than in SQLite's busy handler.

SQLite lets one connection write at a time; another that tries waits in SQLite's
busy handler, which sleeps in steps of up to 100 ms between tries. Under a burst
of concurrent writes (32 submits at once, each on its own thread and connection)
that sleeping is most of the latency and the p99 reaches seconds. Writers that
queue on a lock here instead start the moment the one before them commits. Other
processes' writers (the workers) still meet the busy handler, as before.

On PostgreSQL, which writes concurrently, `one_writer()` does nothing.

`one_writer(durable=False)` is for a write whose loss in a database crash costs
nothing (a heartbeat's time, rewritten a second later): on PostgreSQL its commit
does not wait for the WAL flush (`synchronous_commit` off, for that transaction only).
"""

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connection, transaction

_lock = threading.RLock()


@contextmanager
def one_writer(durable: bool = True) -> Iterator[None]:
    """Hold this process's SQLite write turn for the block (a transaction that writes)."""
    if connection.vendor == "postgresql" and not durable:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit TO OFF")
            yield
        return
    if connection.vendor != "sqlite":
        yield
        return
    with _lock:
        yield
