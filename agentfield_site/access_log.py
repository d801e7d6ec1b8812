"""daphne's access log without the `?api_key=` a URL may carry (EventSource can only
send its key that way): the value is written as `[redacted]`.

Nor with a line for every heartbeat answered: an SDK agent beats every 2 s, and
one agent's beats would bury every other line (and `make run`'s banner with the
admin password). A refused or failed beat (4xx, 5xx) is logged; a node's last
beat is on its page in the admin and the dashboard.

daphne builds its access logger after it has imported the application, from the
name `daphne.cli.AccessLogGenerator`; `asgi.py` calls `install()` so that every
way of starting daphne (`make run`, `daphne ...` in production, the tests) logs
through this class.
"""

import re

from daphne import cli
from daphne.access import AccessLogGenerator

_SECRET_PARAM = re.compile(r"(?i)([?&](?:api_key|apikey|access_token|token)=)[^&#\s\"]*")
# daphne's request field: "METHOD path".
_HEARTBEAT = re.compile(r"POST /api/v1/nodes/[^/?\s]+/heartbeat/?(?:\?\S*)?")


def redact(request_line: str) -> str:
    """`request_line` with the values of secret-bearing query parameters replaced."""
    return _SECRET_PARAM.sub(r"\1[redacted]", request_line)


class RedactingAccessLog(AccessLogGenerator):
    """Secrets redacted, answered heartbeats left out."""

    def write_entry(self, host, date, request, status=None, length=None, ident=None, user=None) -> None:
        if status is not None and 200 <= status < 300 and _HEARTBEAT.fullmatch(request):
            return
        super().write_entry(host, date, redact(request), status, length, ident, user)


def install() -> None:
    cli.AccessLogGenerator = RedactingAccessLog
