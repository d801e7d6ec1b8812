"""Which subscriptions and deliveries a caller may see and act on.

An admin sees all. A client key sees the subscriptions it created and the
deliveries made for its executions and subscriptions (their dead letters too).
Other keys' objects answer 404, as unknown ones do.
"""

from django.db.models import QuerySet

from agentfield_site.auth import CLIENT, Caller, owned_by

from .models import Delivery, Subscription


def subscriptions_of(caller: Caller) -> QuerySet[Subscription]:
    return owned_by(caller, Subscription.objects.all(), CLIENT)


def deliveries_of(caller: Caller) -> QuerySet[Delivery]:
    return owned_by(caller, Delivery.objects.all(), CLIENT)
