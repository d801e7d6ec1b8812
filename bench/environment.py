"""What every bench suite sets up the same way: Django on a throwaway database.

A suite runs against the database DATABASE_URL names (SQLite by default), in a
database of its own beside it, like the tests do, so a bench never touches data.
"""

import os
import tempfile


def setup_django(suite: str) -> None:
    """Point Django at a throwaway database named after the suite, allow loopback targets, start it."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "agentfield_site.settings")
    os.environ.setdefault("SECRET_KEY", "bench-only-not-secret")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ["Q_NAME"] = f"bench-{suite}-{os.getpid()}"
    allowed = os.environ.get("WEBHOOK_ALLOWED_HOSTS", "")
    os.environ["WEBHOOK_ALLOWED_HOSTS"] = ",".join(filter(None, [allowed, "127.0.0.1"]))
    if not os.environ.get("TEST_DB_NAME"):
        if os.environ.get("DATABASE_URL", "").startswith("postgres"):
            os.environ["TEST_DB_NAME"] = f"bench_{suite}_{os.getpid()}"
        else:
            os.environ["TEST_DB_NAME"] = os.path.join(tempfile.gettempdir(), f"bench-{suite}-{os.getpid()}.sqlite3")
    import django

    django.setup()



def parse_options(argv: list[str]) -> dict[str, str]:
    """`--name=value` arguments as a dict (bare flags are left out)."""
    return dict(a.lstrip("-").split("=", 1) for a in argv if "=" in a)
