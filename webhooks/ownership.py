"""Which subscriptions and deliveries a caller may see and act on.

An admin sees all. A client key sees the subscriptions it created and the
deliveries made for its executions and subscriptions (their dead letters too).
Other keys' objects answer 404, as unknown ones do.
"""

from django.db.models import QuerySet

from agentfield_site.auth import ADMIN, CLIENT, Caller

from .models import Delivery, Subscription


def subscriptions_of(caller: Caller) -> QuerySet[Subscription]:
    if caller.scope == ADMIN:
        return Subscription.objects.all()
    if caller.scope == CLIENT and caller.key_id is not None:
        return Subscription.objects.filter(owner_id=caller.key_id)
    return Subscription.objects.none()


def deliveries_of(caller: Caller) -> QuerySet[Delivery]:
    if caller.scope == ADMIN:
        return Delivery.objects.all()
    if caller.scope == CLIENT and caller.key_id is not None:
        return Delivery.objects.filter(owner_id=caller.key_id)
    return Delivery.objects.none()
