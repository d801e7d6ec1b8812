"""Run the soak or the load test outside pytest: Django set up on a throwaway database."""

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bench.environment import setup_django


@contextlib.contextmanager
def throwaway_database(name: str) -> Iterator["ProcessEnv"]:  # noqa: F821 - imported after Django starts
    """Create a test database beside DATABASE_URL's, yield a ProcessEnv on it, then drop it.

    Child processes' logs stay in a temporary directory that survives the run, so a
    failure can be read afterwards.
    """
    os.environ["CHANNEL_PREFIX"] = f"asgi-{name}-{os.getpid()}"
    setup_django(name)
    from django.db import connection

    from devtools.processes import ProcessEnv

    test_db = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    env = ProcessEnv.for_current_database(Path(tempfile.mkdtemp(prefix=f"{name}-logs-")))
    try:
        yield env
    finally:
        env.stop_all()
        connection.close()
        connection.creation.destroy_test_db(test_db, verbosity=0)
        _drop_queues()


def _drop_queues() -> None:
    """With Redis, drop this run's task queues too: tasks no worker took would stay there for good."""
    from django.conf import settings

    if settings.REDIS_URL:
        import redis

        client = redis.Redis.from_url(settings.REDIS_URL)
        try:
            for key in client.scan_iter(match=f"django_q:{os.environ['Q_NAME']}*"):
                client.delete(key)
        finally:
            client.close()
