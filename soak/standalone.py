"""Run the soak or the load test outside pytest: Django set up on a throwaway database."""

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def throwaway_database(name: str) -> Iterator["ProcessEnv"]:  # noqa: F821 - imported after Django starts
    """Create a test database beside DATABASE_URL's, yield a ProcessEnv on it, then drop it.

    Child processes' logs stay in a temporary directory that survives the run, so a
    failure can be read afterwards.
    """
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "agentfield_site.settings")
    os.environ.setdefault("SECRET_KEY", f"{name}-only-not-secret")
    os.environ["Q_CLUSTER_NAME"] = f"{name}-{os.getpid()}"
    os.environ["CHANNEL_PREFIX"] = f"asgi-{name}-{os.getpid()}"
    if not os.environ.get("TEST_DB_NAME"):
        if os.environ.get("DATABASE_URL", "").startswith("postgres"):
            os.environ["TEST_DB_NAME"] = f"{name}_{os.getpid()}"
        else:
            os.environ["TEST_DB_NAME"] = os.path.join(tempfile.gettempdir(), f"{name}-{os.getpid()}.sqlite3")
    import django

    django.setup()
    from django.db import connection

    from tests.support.processes import ProcessEnv

    test_db = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    env = ProcessEnv.for_current_database(Path(tempfile.mkdtemp(prefix=f"{name}-logs-")))
    try:
        yield env
    finally:
        env.stop_all()
        connection.close()
        connection.creation.destroy_test_db(test_db, verbosity=0)
