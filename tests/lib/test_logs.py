"""A failure that repeats (the broker is down) is logged once a while, not once each time."""

import logging

from agentfield_site.lib import logs
from agentfield_site.lib.logs import Repeated


def _fail(repeated: Repeated, *args) -> None:
    try:
        raise ConnectionError("the broker is down")
    except ConnectionError:
        repeated.log(*args)


def test_the_first_is_logged_with_its_traceback_then_the_repeats_are_counted(caplog, monkeypatch):
    now = [100.0]
    monkeypatch.setattr(logs.time, "monotonic", lambda: now[0])
    repeated = Repeated(logging.getLogger("test.repeated"), "could not enqueue %s", logging.ERROR, every=30)
    with caplog.at_level(logging.WARNING, "test.repeated"):
        for _ in range(500):
            _fail(repeated, "task")
        now[0] += 31
        _fail(repeated, "task")
    first, second = caplog.records
    assert first.getMessage() == "could not enqueue task" and first.levelno == logging.ERROR
    assert first.exc_info and first.exc_info[0] is ConnectionError
    assert second.getMessage() == "could not enqueue task (499 more since the last one logged)"
