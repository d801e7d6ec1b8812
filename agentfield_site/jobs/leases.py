"""Named leases: at most one live holder, taken over once the holder stops renewing."""

from datetime import timedelta

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from agentfield_site.models import Lease


def acquire(name: str, holder: str, seconds: float) -> bool:
    """Take or renew the lease; True when `holder` has it for the next `seconds`."""
    now = timezone.now()
    until = now + timedelta(seconds=seconds)
    taken = (
        Lease.objects.filter(name=name)
        .filter(Q(holder=holder) | Q(expires_at__lt=now))
        .update(holder=holder, expires_at=until)
    )
    if taken:
        return True
    try:
        with transaction.atomic():
            Lease.objects.create(name=name, holder=holder, expires_at=until)
        return True
    except IntegrityError:
        return False


def release(name: str, holder: str) -> None:
    Lease.objects.filter(name=name, holder=holder).update(expires_at=timezone.now())


def expire(name: str) -> None:
    """End the lease whoever holds it: the next `acquire` takes it."""
    Lease.objects.filter(name=name).update(expires_at=timezone.now())


def state(name: str) -> tuple[str, object] | None:
    """(holder, expiry) as the lease stands, held or lapsed; None if it was never taken.

    A live holder renews: its expiry moves on from one look to the next.
    """
    return Lease.objects.filter(name=name).values_list("holder", "expires_at").first()


def is_held(name: str) -> bool:
    return Lease.objects.filter(name=name, expires_at__gte=timezone.now()).exists()
