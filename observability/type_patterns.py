"""Event-type patterns: `*` matches any run of characters, everything else is literal.

Subscriptions, the collector forwarder and stream filters all select events with
these patterns, in memory and in SQL. The regex uses `.*` as its only syntax, so
the same string works in Python, SQLite (Django's REGEXP) and PostgreSQL.
"""

import re
from collections.abc import Iterable
from functools import lru_cache


def type_regex(patterns: Iterable[str]) -> str:
    """One anchored regex matching any of the patterns."""
    return "^(" + "|".join(".*".join(re.escape(part) for part in p.split("*")) for p in patterns) + ")$"


@lru_cache(maxsize=1024)
def _compiled(patterns: tuple[str, ...]) -> re.Pattern:
    return re.compile(type_regex(patterns))


def matches(patterns: Iterable[str], event_type: str) -> bool:
    """Whether `event_type` matches any of the patterns (none: no match)."""
    patterns = tuple(patterns)
    return bool(patterns) and _compiled(patterns).match(event_type) is not None
