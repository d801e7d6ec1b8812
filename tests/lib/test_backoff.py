"""Retry delays: schedule as data with jitter; Retry-After honoured between the schedule and 2x."""

import time
from email.utils import formatdate

from agentfield_site.lib.backoff import delay_for, honour_retry_after, retry_after_seconds


def test_schedule_with_jitter_and_exhaustion():
    schedule = [5, 30, 120]
    for _ in range(200):
        assert 4.0 <= delay_for(1, schedule) <= 6.0
        assert 24.0 <= delay_for(2, schedule) <= 36.0
    assert delay_for(3, schedule, jitter=0) == 120
    assert delay_for(4, schedule) is None
    assert delay_for(0, schedule) is None


def test_retry_after_seconds_date_and_clamp():
    assert honour_retry_after("7", 5.0) == 7.0
    assert honour_retry_after("100", 5.0) == 10.0
    assert honour_retry_after(None, 5.0) == 5.0
    assert honour_retry_after("soon", 5.0) == 5.0
    assert 40.0 <= honour_retry_after(formatdate(time.time() + 45, usegmt=True), 30.0) <= 45.5
    assert honour_retry_after(formatdate(time.time() + 3600, usegmt=True), 30.0) == 60.0


def test_retry_after_never_shortens_the_schedule():
    """A receiver answering `Retry-After: 1` every time must not spend the retry budget in seconds."""
    assert honour_retry_after("1", 5.0) == 5.0
    assert honour_retry_after("0", 30.0) == 30.0
    assert honour_retry_after("-50", 30.0) == 30.0
    assert honour_retry_after(formatdate(time.time() - 3600, usegmt=True), 30.0) == 30.0


def test_retry_after_seconds_parses_or_says_none():
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds("-3") == 0.0
    assert retry_after_seconds("nan") is None
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("") is None
    assert 2.0 <= retry_after_seconds(formatdate(time.time() + 4, usegmt=True)) <= 4.5
