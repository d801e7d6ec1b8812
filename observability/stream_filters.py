"""Which events a stream carries: the contract's filters, applied in SQL and in memory.

The same filter narrows a replay (a database query) and the live fan-out (a test on
each event document), so both halves of a stream agree on what belongs to it.
"""

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from django.db.models import Q

from .models import SOURCES

# A type pattern is a dotted event type where `*` matches any run of characters.
_PATTERN_RE = re.compile(r"^[a-z0-9_.*]{1,64}$")
_FIELDS = ("execution_id", "workflow_id", "agent_node_id", "status")
_FIELD_MAX = 128


class FilterError(ValueError):
    """A filter value a client sent that cannot be used (a 400)."""


def _pattern_regex(pattern: str) -> str:
    # Anchored, with only `.*` as syntax: the same string works in Python, SQLite
    # (Django's REGEXP) and PostgreSQL.
    return "^" + ".*".join(re.escape(part) for part in pattern.split("*")) + "$"


@dataclass(frozen=True)
class EventFilter:
    """Equality filters on the document's id fields, type patterns, and a source scope."""

    execution_id: str = ""
    workflow_id: str = ""
    agent_node_id: str = ""
    status: str = ""
    types: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    _regexes: tuple[re.Pattern, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        compiled = tuple(re.compile(_pattern_regex(p)) for p in self.types if p != "*")
        object.__setattr__(self, "_regexes", compiled)

    @property
    def any_type(self) -> bool:
        return not self.types or "*" in self.types

    def matches(self, doc: Mapping) -> bool:
        """Whether an event document (`PlatformEvent.as_document()`) passes."""
        for name in _FIELDS:
            wanted = getattr(self, name)
            if wanted and doc.get(name, "") != wanted:
                return False
        if self.sources and doc.get("source") not in self.sources:
            return False
        if self.any_type:
            return True
        event_type = doc.get("type", "")
        return any(regex.match(event_type) for regex in self._regexes)

    def q(self) -> Q:
        """The same test as a query on PlatformEvent."""
        query = Q()
        for name in _FIELDS:
            wanted = getattr(self, name)
            if wanted:
                query &= Q(**{name: wanted})
        if self.sources:
            query &= Q(source__in=self.sources)
        if not self.any_type:
            exact = [p for p in self.types if "*" not in p]
            wild = [p for p in self.types if "*" in p]
            type_q = Q(type__in=exact) if exact else Q(pk__in=[])
            for pattern in wild:
                type_q |= Q(type__regex=_pattern_regex(pattern))
            query &= type_q
        return query

    def narrowed(self, **changes: object) -> "EventFilter":
        """A copy with some fields replaced (a stream's fixed scope over the client's filters)."""
        values = {name: getattr(self, name) for name in (*_FIELDS, "types", "sources")}
        values.update(changes)
        return EventFilter(**values)


def parse_filters(params: Mapping[str, object], *, sources: Iterable[str] = ()) -> EventFilter:
    """An EventFilter from query parameters or a WebSocket `filters` object.

    `types` is a comma list or a JSON list; unknown keys are ignored so clients can
    send more than this server knows about. Raises FilterError for unusable values.
    """
    values: dict[str, object] = {}
    for name in _FIELDS:
        raw = params.get(name, "")
        if raw is None:
            raw = ""
        if not isinstance(raw, str):
            raise FilterError(f"Filter {name!r} must be a string.")
        raw = raw.strip()
        if len(raw) > _FIELD_MAX:
            raise FilterError(f"Filter {name!r} is longer than {_FIELD_MAX} characters.")
        if "\x00" in raw:  # PostgreSQL refuses the query, which would end the stream
            raise FilterError(f"Filter {name!r} contains a NUL character.")
        values[name] = raw
    raw_types = params.get("types", "") or ""
    if isinstance(raw_types, str):
        parts = raw_types.split(",")
    elif isinstance(raw_types, list) and all(isinstance(t, str) for t in raw_types):
        parts = raw_types
    else:
        raise FilterError("Filter 'types' must be a comma-separated string or a list of strings.")
    types = tuple(dict.fromkeys(p.strip().lower() for p in parts if p.strip()))
    for pattern in types:
        if not _PATTERN_RE.match(pattern):
            raise FilterError(
                f"Event type pattern {pattern!r} is not valid: use dotted names such as "
                "'execution.completed' or 'webhook.*'."
            )
    scope = tuple(sources)
    for source in scope:
        if source not in SOURCES:
            raise FilterError(f"Unknown event source {source!r}.")
    return EventFilter(types=types, sources=scope, **values)
