"""Who owns an execution or a subscription, asked by the layers below the apps that know.

The answers belong to the executions and webhooks apps, which fill these in from
their AppConfig.ready (dependencies point one way: executions → webhooks →
observability). Client-scoped streams and client-owned subscriptions ask.

An event belongs to its execution's owner, except a webhook event about a
subscription's delivery, which belongs to the subscription's owner: an operator's
subscription to everything must not show its URL to the client whose execution it
delivered.
"""

from collections.abc import Callable, Collection

from django.db.models import QuerySet

# Execution ids -> the id of the key that owns each (None: no key row).
execution_owners: list[Callable[[Collection[str]], dict[str, int | None]]] = []
# A key id -> the ids of the executions it owns, as a subquery.
executions_owned_by: list[Callable[[int], QuerySet]] = []
# Subscription ids -> the id of the key that owns each; a key id -> its subscriptions' ids.
subscription_owners: list[Callable[[Collection[str]], dict[str, int | None]]] = []
subscriptions_owned_by: list[Callable[[int], list[str]]] = []


def event_owners(docs: Collection[dict]) -> list[int | None]:
    """The key each event document belongs to (see above), in order; None: no key's."""
    executions = _asked(execution_owners, {d.get("execution_id") for d in docs} - {None, ""})
    subscriptions = _asked(subscription_owners, {s for d in docs if (s := _subscription_of(d))})
    return [
        subscriptions.get(sub) if (sub := _subscription_of(d)) else executions.get(d.get("execution_id"))
        for d in docs
    ]


def _subscription_of(doc: dict) -> str | None:
    if doc.get("source") != "webhook" or not isinstance(doc.get("data"), dict):
        return None
    sub = doc["data"].get("subscription_id")
    return sub if isinstance(sub, str) and sub else None


def _asked(lookups: list[Callable[[Collection[str]], dict]], ids: Collection[str]) -> dict:
    found: dict = {}
    if ids:
        for lookup in lookups:
            found.update(lookup(ids))
    return found
