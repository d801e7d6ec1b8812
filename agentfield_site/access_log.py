"""daphne's access log without the `?api_key=` a URL may carry (EventSource can only
send its key that way): the value is written as `[redacted]`.

daphne builds its access logger after it has imported the application, from the
name `daphne.cli.AccessLogGenerator`; `asgi.py` calls `install()` so that every
way of starting daphne (`make run`, `daphne ...` in production, the tests) logs
through this class.
"""

import re

from daphne import cli
from daphne.access import AccessLogGenerator

_SECRET_PARAM = re.compile(r"(?i)([?&](?:api_key|apikey|access_token|token)=)[^&#\s\"]*")


def redact(request_line: str) -> str:
    """`request_line` with the values of secret-bearing query parameters replaced."""
    return _SECRET_PARAM.sub(r"\1[redacted]", request_line)


class RedactingAccessLog(AccessLogGenerator):
    def write_entry(self, host, date, request, status=None, length=None, ident=None, user=None) -> None:
        super().write_entry(host, date, redact(request), status, length, ident, user)


def install() -> None:
    cli.AccessLogGenerator = RedactingAccessLog
