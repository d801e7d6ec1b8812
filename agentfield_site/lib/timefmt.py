"""Timestamps on the wire: ISO 8601 with a `Z` for UTC, as the AgentField contract writes them."""

from datetime import UTC, datetime


def iso(value: datetime | None) -> str | None:
    """`2026-11-29T13:09:15.123456Z` for an aware UTC datetime; None stays None."""
    return value.isoformat().replace("+00:00", "Z") if value else None



def fits_utc(value: datetime) -> bool:
    """Whether `value` is an instant the database can hold: one that UTC can write.

    `9999-12-31T23:59:59-05:00` parses, but in UTC it is in the year 10000, and the
    SQLite backend's conversion fails (an OverflowError, a 500) when it is used in
    a query.
    """
    from django.utils import timezone

    try:
        (value if timezone.is_aware(value) else timezone.make_aware(value)).astimezone(UTC)
    except (OverflowError, ValueError):
        return False
    return True
