"""Which subscriptions and deliveries a caller may see and act on.

An admin sees all. A client key sees the subscriptions it created and the
deliveries made for its executions and subscriptions (their dead letters too).
Other keys' objects answer 404, as unknown ones do.
"""

from collections.abc import Collection

from django.db.models import QuerySet

from agentfield_site.auth import CLIENT, Caller, owned_by

from .models import Delivery, Subscription


def subscriptions_of(caller: Caller) -> QuerySet[Subscription]:
    return owned_by(caller, Subscription.objects.all(), CLIENT)


def deliveries_of(caller: Caller) -> QuerySet[Delivery]:
    return owned_by(caller, Delivery.objects.all(), CLIENT)


def subscription_owners(subscription_ids: Collection[str]) -> dict[str, int | None]:
    """The owning key of each subscription (whose webhook events a client's stream shows)."""
    return dict(Subscription.objects.filter(pk__in=list(subscription_ids)).values_list("pk", "owner_id"))


def subscriptions_owned_by(key_id: int) -> list[str]:
    """A key's subscription ids: at most WEBHOOK_MAX_SUBSCRIPTIONS_PER_KEY of them."""
    return list(Subscription.objects.filter(owner_id=key_id).values_list("pk", flat=True))
