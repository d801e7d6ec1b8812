"""Event-type patterns: `*` matches any run of characters, everything else is literal.

Subscriptions, the collector forwarder and stream filters all select events with
these patterns, in memory and in SQL. The regex uses `.*` as its only syntax, so
the same string works in Python, SQLite (Django's REGEXP) and PostgreSQL.

Patterns come from callers, and every event is matched against every enabled
subscription's patterns while it is published: a pattern must never cost more
than its length times the type's. So a pattern has at most `MAX_WILDCARDS`
stars (`pattern_problem`, the one check every caller-facing input goes
through), runs of stars collapse to one in the regex, and in memory patterns are
matched without a regex at all (`matches`), so a stored pattern from before the
check cannot make a backtracking regex either.
"""

import re
from collections.abc import Iterable

# Event types are lower case; an upper-case pattern would match none of them.
_PATTERN = re.compile(r"[a-z0-9_.*\-]{1,64}")
# `node.*`, `*.failed`, `execution.*ed`: two stars are more than any real selection needs.
MAX_WILDCARDS = 2
# Patterns in one selection (a subscription's, a stream's): every event is matched
# against each of them, on the event loop for a stream, so their number is bounded too.
MAX_PATTERNS = 50


def pattern_problem(pattern: object) -> str | None:
    """Why `pattern` is not a usable event type pattern, or None when it is."""
    if not isinstance(pattern, str) or not _PATTERN.fullmatch(pattern):
        return (
            f"event type pattern {pattern!r} must be 1 to 64 lower-case letters, digits, '.', '_', '-' or '*' "
            '(e.g. "execution.completed" or "node.*").'
        )
    if pattern.count("*") > MAX_WILDCARDS:
        return f"event type pattern {pattern!r} may use '*' at most {MAX_WILDCARDS} times."
    return None


def type_regex(patterns: Iterable[str]) -> str:
    """One anchored regex matching any of the patterns."""
    return "^(" + "|".join(
        ".*".join(re.escape(part) for part in re.sub(r"\*+", "*", p).split("*")) for p in patterns
    ) + ")$"


def _matches_one(pattern: str, event_type: str) -> bool:
    """`*` as any run of characters, in time linear in the lengths.

    The first and last pieces are anchored; each piece between stars is taken
    at its leftmost place after the one before, which can never rule out a match
    that a later place would allow.
    """
    pieces = pattern.split("*")
    if len(pieces) == 1:
        return pattern == event_type
    head, *middle, tail = pieces
    if len(event_type) < len(head) + len(tail) or not event_type.startswith(head) or not event_type.endswith(tail):
        return False
    at, end = len(head), len(event_type) - len(tail)
    for piece in middle:
        found = event_type.find(piece, at, end)
        if found < 0:
            return False
        at = found + len(piece)
    return True


def matches(patterns: Iterable[str], event_type: str) -> bool:
    """Whether `event_type` matches any of the patterns (none: no match)."""
    return any(_matches_one(p, event_type) for p in patterns)
