"""Timestamps on the wire: ISO 8601 with a `Z` for UTC, as the AgentField contract writes them."""

from datetime import datetime


def iso(value: datetime | None) -> str | None:
    """`2026-11-29T13:09:15.123456Z` for an aware UTC datetime; None stays None."""
    return value.isoformat().replace("+00:00", "Z") if value else None

