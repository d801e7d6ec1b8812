"""daphne's access log without the `?api_key=` a URL may carry (EventSource can only
send its key that way): the value is written as `[redacted]`.

Nor with a line for every heartbeat answered: an SDK agent beats every 2 s, and
one agent's beats would bury every other line (and `make run`'s banner with the
admin password). A refused or failed beat (4xx, 5xx) is logged; a node's last
beat is on its page in the admin and the dashboard.

Its lines follow LOG_LEVEL as log records would: an answered request is INFO, a
refused one (4xx) WARNING and a failed one (5xx) ERROR, so `LOG_LEVEL=WARNING`
keeps only the refused and the failed. (daphne writes the lines itself, not
through `logging`.)

daphne builds its access logger after it has imported the application, from the
name `daphne.cli.AccessLogGenerator`; `asgi.py` calls `install()` so that every
way of starting daphne (`make run`, `daphne ...` in production, the tests) logs
through this class.

Twisted's HTTP server, under daphne, also formatted a combined-log line of its
own for every request and handed it to Twisted's log: daphne sends that log
nowhere (or, with `-v 2`, to the console, a second line for every request, the
API key in a URL unredacted). It cost 4 % of a web process's time under the
fleet bench (`python -m bench api`). `install()` turns it off: this log is the one.
"""

import logging
import re
from urllib.parse import unquote_plus

from daphne import cli
from daphne.access import AccessLogGenerator
from daphne.http_protocol import HTTPFactory

# Parameters whose values are secrets, by their decoded names: `api%5Fkey` is `api_key` to
# the query parser that reads the key, so it is to this log as well.
_SECRET_NAMES = {"api_key", "apikey", "access_token", "token"}
_PARAM = re.compile(r"([?&])([^=&#\s\"]*)=([^&#\s\"]*)")
# daphne's request field: "METHOD path".
_HEARTBEAT = re.compile(r"POST /api/v1/nodes/[^/?\s]+/heartbeat/?(?:\?\S*)?")


def redact(request_line: str) -> str:
    """`request_line` with the values of secret-bearing query parameters replaced."""

    def one(param: re.Match) -> str:
        if unquote_plus(param.group(2)).lower() in _SECRET_NAMES:
            return f"{param.group(1)}{param.group(2)}=[redacted]"
        return param.group(0)

    return _PARAM.sub(one, request_line)


def level_of(status: int | None) -> int:
    """The log level an access line for `status` has (no status: a WebSocket's, INFO)."""
    if status is not None and status >= 500:
        return logging.ERROR
    if status is not None and status >= 400:
        return logging.WARNING
    return logging.INFO


class RedactingAccessLog(AccessLogGenerator):
    """Secrets redacted, answered heartbeats left out, lines below LOG_LEVEL too."""

    def write_entry(self, host, date, request, status=None, length=None, ident=None, user=None) -> None:
        if level_of(status) < logging.getLogger().getEffectiveLevel():  # the root's: LOG_LEVEL
            return
        if status is not None and 200 <= status < 300 and _HEARTBEAT.fullmatch(request):
            return
        super().write_entry(host, date, redact(request), status, length, ident, user)


def _no_twisted_access_line(factory: HTTPFactory, request) -> None:
    """Twisted's own access line for a finished request: not made (`RedactingAccessLog` writes the log)."""


def install() -> None:
    cli.AccessLogGenerator = RedactingAccessLog
    HTTPFactory.log = _no_twisted_access_line
