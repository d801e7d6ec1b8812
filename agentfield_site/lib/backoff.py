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


def honour_retry_after(value: str | None, scheduled: float) -> float:
    """The delay to use given a `Retry-After` header (seconds or HTTP date).

    A receiver may ask for more time but never more than twice the scheduled
    delay (so one bad header cannot park a delivery for days); an unparsable or
    absent header keeps the schedule.
    """
    if not value:
        return scheduled
    value = value.strip()
    try:
        wanted = float(value)
    except ValueError:
        try:
            wanted = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return scheduled
    if wanted != wanted:  # NaN
        return scheduled
    return min(max(wanted, 0.0), 2 * scheduled)
