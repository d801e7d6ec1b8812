"""A graceful stop reaches the long loops that run as django-q2 tasks.

django-q2 stops a cluster by letting each running task end on its own. The
sweeper's, the sender's and the forwarder's runs last up to SWEEP_RUN_SECONDS,
`webhooks.delivery.RUN_SECONDS` and OBSERVABILITY_RUN_SECONDS, so a Ctrl-C or a
SIGTERM used to wait for them: 5 to 10 s with nothing to do, up to a minute
while a collector was busy.

`manage.py worker` names a file (in `STOP_FILE`, its clusters' environment) and
creates it as soon as it is told to stop, before it passes the stop on. The loops
ask `requested()` at every turn and end their run as they do when their time is
up: requests in flight finish, or are cut off after a short grace and handed
back (due again, no attempt recorded), and leases are released. A file rather than a signal: it reaches every process
of the cluster, forked or not, and asking costs one `stat` at most every
CHECK_EVERY seconds. A qcluster started some other way has no such file, and
its runs end when their time is up, as before.
"""

import os
import time
from pathlib import Path

STOP_FILE = "WORKER_STOP_FILE"
CHECK_EVERY = 0.1

_seen = False
_checked_at = float("-inf")


def requested() -> bool:
    """True once the `manage.py worker` this process runs under was told to stop."""
    global _seen, _checked_at
    if _seen:
        return True
    path = os.environ.get(STOP_FILE)
    now = time.monotonic()
    if path and now - _checked_at >= CHECK_EVERY:
        _checked_at = now
        _seen = os.path.exists(path)
    return _seen


def request(path: str) -> None:
    """Tell every process whose STOP_FILE is `path` to wind its long loops down."""
    Path(path).touch()
