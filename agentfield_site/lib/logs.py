"""What the log does with requests the server refuses as suspicious, and with failures that repeat."""

import logging
import threading
import time


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


class Repeated:
    """A failure that may come many times a second (the broker is down): logged with
    its traceback at most once per `every` seconds, saying how many more came between.

    While Redis was down, each commit's wake-up and each submit's hand-over logged a
    traceback: 461 of them in ten seconds in one worker's log. Call `log()` in the
    `except` block, with the message's arguments.
    """

    def __init__(self, logger: logging.Logger, message: str, level: int = logging.WARNING, every: float = 30.0) -> None:
        self.logger, self.message, self.level, self.every = logger, message, level, every
        self._lock = threading.Lock()
        self._quiet_until = 0.0
        self._left_out = 0

    def log(self, *args) -> None:
        now = time.monotonic()
        with self._lock:
            if now < self._quiet_until:
                self._left_out += 1
                return
            left_out, self._left_out, self._quiet_until = self._left_out, 0, now + self.every
        message = self.message
        if left_out:
            message += f" ({left_out} more since the last one logged)"
        self.logger.log(self.level, message, *args, exc_info=True)
