"""Which events a stream carries: the contract's filters, applied in SQL and in memory.

The same filter narrows a replay (a database query) and the live fan-out (a test on
each event document), so both halves of a stream agree on what belongs to it.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from django.db.models import Q

from .models import SOURCES
from .owners import executions_owned_by, subscriptions_owned_by
from .type_patterns import MAX_PATTERNS, matches, pattern_problem, type_regex

_FIELDS = ("execution_id", "workflow_id", "agent_node_id", "status")
_FIELD_MAX = 128

# The statuses events carry, and the other names a client may give one by (name ->
# the status events carry): filled in by the apps that publish events, from their
# AppConfig.ready (dependencies point one way). A `status` filter outside them
# would keep a stream empty for ever: it is a 400 instead, and an alias
# (`completed`) filters on its status (`succeeded`), as the executions list does.
statuses: dict[str, str] = {}


class FilterError(ValueError):
    """A filter value a client sent that cannot be used (a 400)."""


@dataclass(frozen=True)
class EventFilter:
    """Equality filters on the document's id fields, type patterns, and a source scope.

    `owner_id` (set by the server, never by a client) keeps only the events of the
    executions that key owns: a client key's stream.
    """

    execution_id: str = ""
    workflow_id: str = ""
    agent_node_id: str = ""
    status: str = ""
    types: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    owner_id: int | None = None

    @property
    def any_type(self) -> bool:
        return not self.types or "*" in self.types

    def matches(self, doc: Mapping, owner_id: int | None = None) -> bool:
        """Whether an event document (`PlatformEvent.as_document()`) passes; `owner_id`: its execution's owner."""
        if self.owner_id is not None and owner_id != self.owner_id:
            return False
        for name in _FIELDS:
            wanted = getattr(self, name)
            if wanted and doc.get(name, "") != wanted:
                return False
        if self.sources and doc.get("source") not in self.sources:
            return False
        if self.any_type:
            return True
        return matches(self.types, doc.get("type", ""))

    def q(self) -> Q:
        """The same test as a query on PlatformEvent."""
        query = Q()
        for name in _FIELDS:
            wanted = getattr(self, name)
            if wanted:
                query &= Q(**{name: wanted})
        if self.sources:
            query &= Q(source__in=self.sources)
        if self.owner_id is not None:
            query &= self._owned_q()
        if not self.any_type:
            exact = [p for p in self.types if "*" not in p]
            wild = [p for p in self.types if "*" in p]
            # Exact types go through the index; only the wildcards need a regex scan.
            type_q = Q(type__in=exact) if exact else Q(pk__in=[])
            if wild:
                type_q |= Q(type__regex=type_regex(wild))
            query &= type_q
        return query


    def _owned_q(self) -> Q:
        """The events of `owner_id`, as `owners.event_owners` decides in memory: a subscription
        delivery's webhook event by its subscription's owner, any other by its execution's."""
        if not executions_owned_by:
            return Q(pk__in=[])
        subscriptions = [s for lookup in subscriptions_owned_by for s in lookup(self.owner_id)]
        delivery_of_a_subscription = Q(source="webhook", data__has_key="subscription_id") & ~Q(
            data__subscription_id=None
        )
        executions = Q(execution_id__in=executions_owned_by[0](self.owner_id))
        mine = ~delivery_of_a_subscription & executions
        if subscriptions:
            mine |= delivery_of_a_subscription & Q(data__subscription_id__in=subscriptions)
        return mine


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
    if values["status"] and statuses:
        status = statuses.get(values["status"].lower())
        if status is None:
            known = ", ".join(sorted(set(statuses.values())))
            raise FilterError(f"Unknown status {values['status']!r}: one of {known}, or an alias of one.")
        values["status"] = status
    raw_types = params.get("types", "") or ""
    if isinstance(raw_types, str):
        parts = raw_types.split(",")
    elif isinstance(raw_types, list) and all(isinstance(t, str) for t in raw_types):
        parts = raw_types
    else:
        raise FilterError("Filter 'types' must be a comma-separated string or a list of strings.")
    types = tuple(dict.fromkeys(p.strip().lower() for p in parts if p.strip()))
    if len(types) > MAX_PATTERNS:
        # Each event is matched against every pattern of every open stream, on the
        # event loop every stream of the process shares; and a replay runs them as one regex.
        raise FilterError(f"Filter 'types' may hold at most {MAX_PATTERNS} patterns.")
    for pattern in types:
        if problem := pattern_problem(pattern):
            raise FilterError(problem[0].upper() + problem[1:])
    scope = tuple(sources)
    for source in scope:
        if source not in SOURCES:
            raise FilterError(f"Unknown event source {source!r}.")
    return EventFilter(types=types, sources=scope, **values)
