"""Retry delays: schedule as data with jitter; Retry-After honoured within 2x."""

import time
from email.utils import formatdate

from agentfield_site.lib.backoff import delay_for, honour_retry_after


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
    assert 2.0 <= honour_retry_after(formatdate(time.time() + 4, usegmt=True), 30.0) <= 4.5
    assert honour_retry_after(formatdate(time.time() + 3600, usegmt=True), 30.0) == 60.0
