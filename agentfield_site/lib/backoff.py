"""Retry timing as data: a schedule of delays with jitter, and `Retry-After` within bounds."""

import random
import time
from collections.abc import Sequence
from email.utils import parsedate_to_datetime


def delay_for(attempt: int, schedule: Sequence[float], jitter: float = 0.2) -> float | None:
    """Seconds to wait before the next attempt, or None when the schedule is spent.

    `attempt` is the number of attempts made so far: after the first (attempt=1)
    the delay is `schedule[0]`. Jitter of +-`jitter` spreads retries of a burst of
    failures so they do not hit a recovering receiver at the same instant.
    """
    index = attempt - 1
    if index < 0 or index >= len(schedule):
        return None
    base = float(schedule[index])
    return max(0.0, base * (1 + random.uniform(-jitter, jitter)))


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds a `Retry-After` header (seconds or HTTP date) asks for, or None when absent or unparsable."""
    if not value:
        return None
    value = value.strip()
    try:
        wanted = float(value)
    except ValueError:
        try:
            wanted = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    if wanted != wanted:  # NaN
        return None
    return max(wanted, 0.0)


def honour_retry_after(value: str | None, scheduled: float) -> float:
    """The delay to use given a `Retry-After` header: the scheduled delay, or longer if asked.

    A receiver may ask for more time but never more than twice the scheduled
    delay (so one bad header cannot park a delivery for days), and never for
    less: a `Retry-After: 1` on every answer would otherwise spend the whole
    retry budget in seconds. An unparsable or absent header keeps the schedule.
    """
    wanted = retry_after_seconds(value)
    if wanted is None:
        return scheduled
    return min(max(wanted, scheduled), 2 * scheduled)
