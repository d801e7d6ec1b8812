"""What the log does with requests the server refuses as suspicious."""

import logging


class WithoutTraceback(logging.Filter):
    """A refused request in one line: `django.security` (a Host not in ALLOWED_HOSTS, say).

    Django logs each one with the traceback of the exception it answered with a
    400: a dozen lines per request for what any client can send, and nothing in
    them to debug.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info = None
        record.exc_text = None
        return True
