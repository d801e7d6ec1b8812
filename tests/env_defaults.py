"""A pytest plugin (`-p tests.env_defaults`) loaded before Django starts: test defaults.

Each pytest session gets its own queue name, channel prefix and (on SQLite) a
database file, so that real worker and daphne processes started by tests can open
the same database, and two sessions on one Redis never take each other's tasks.
"""

import os
import tempfile

_session = f"t{os.getpid()}"
os.environ.setdefault("SECRET_KEY", "test-secret-key-not-for-production")
os.environ.setdefault("Q_NAME", f"test-{_session}")
os.environ.setdefault("CHANNEL_PREFIX", f"asgi-{_session}")
os.environ.setdefault("WEBHOOK_ALLOWED_HOSTS", "")
if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
    os.environ.setdefault(
        "TEST_DB_NAME", os.path.join(tempfile.gettempdir(), f"agentfield-{_session}.sqlite3")
    )
# A pytest-xdist worker inherits the values above from the session that started it:
# each takes its own queue and channel prefix (pytest-django suffixes its database).
if _worker := os.environ.get("PYTEST_XDIST_WORKER"):
    for _key in ("Q_NAME", "CHANNEL_PREFIX"):
        os.environ[_key] = f"{os.environ[_key]}-{_worker}"
