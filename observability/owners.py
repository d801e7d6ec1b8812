"""Who owns an execution, asked by the layers below the executions app.

The answer belongs to the executions app, which fills these in from its
AppConfig.ready (dependencies point one way: executions → webhooks →
observability). Client-scoped streams and client-owned subscriptions ask.
"""

from collections.abc import Callable, Collection

from django.db.models import QuerySet

# Execution ids -> the id of the key that owns each (None: no key row).
execution_owners: list[Callable[[Collection[str]], dict[str, int | None]]] = []
# A key id -> the ids of the executions it owns, as a subquery.
executions_owned_by: list[Callable[[int], QuerySet]] = []


def owners_of(execution_ids: Collection[str]) -> dict[str, int | None]:
    owners: dict[str, int | None] = {}
    for lookup in execution_owners:
        owners.update(lookup(execution_ids))
    return owners
