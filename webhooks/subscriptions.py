"""Subscriptions: platform events fanned out to standing endpoints, in the event's transaction.

`on_events` is an `observability.events.in_transaction` listener: deliveries are
created atomically with the events they carry, so a crash after commit loses
nothing. The enabled subscriptions are cached per process for a short while, so
a platform with no matching subscription pays no query per event.

Loops: delivering a `webhook.*` event produces another `webhook.*` outcome event.
Outcome events are always logged (and streamed and forwarded), but one whose
delivery itself carried a `webhook.*` event (or a `webhook.test`) is not fanned
out again: a subscription to `webhook.*` hears about deliveries of platform events,
never about deliveries of webhook events, so the chain stops after one step.
"""

import time
from datetime import timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from agentfield_site.lib import outbound, signing
from agentfield_site.lib.timefmt import iso
from agentfield_site.models import ApiKey
from observability.models import PlatformEvent
from observability.owners import event_owners
from observability.type_patterns import matches

from . import delivery
from .models import Delivery, Subscription, SubscriptionSecret

CACHE_SECONDS = 1.0
ROTATION_GRACE = timedelta(hours=24)
# Secrets that sign at once: the current one and those rotated out within the grace.
# Every attempt is signed with each, on the loop every delivery of the process shares,
# so rotating in a loop must not make that cost (and the header) grow without bound.
MAX_ACTIVE_SECRETS = 5

# (id, url, patterns, owner key id, whether the owner is a client key)
_Row = tuple[str, str, tuple[str, ...], int | None, bool]
_cache: tuple[float, list[_Row]] | None = None

def invalidate_cache(**kwargs) -> None:
    """Forget the cached subscriptions (connected to Subscription saves and deletes)."""
    global _cache
    _cache = None


def disable_subscriptions_of_revoked(sender, keys, **kwargs) -> None:
    """`key_revoked`: the revoked keys' subscriptions stop at once.

    Whoever holds a revoked key's endpoints must not go on hearing its events;
    deliveries already queued for them end as for any disabled subscription.
    Other processes' caches follow within CACHE_SECONDS.
    """
    if Subscription.objects.filter(owner__in=keys, enabled=True).update(
        enabled=False, disabled_reason=Subscription.OWNER_REVOKED
    ):
        invalidate_cache()  # as a save does (post_save)


def _enabled() -> list[_Row]:
    global _cache
    now = time.monotonic()
    if _cache is None or _cache[0] < now:
        # Not a revoked key's, however it came to be enabled: a process that had not heard of the
        # revocation (API_KEY_CACHE_SECONDS) still takes the key's writes, after `key_revoked` ran.
        rows = Subscription.objects.filter(
            Q(owner__isnull=True) | Q(owner__revoked_at__isnull=True), enabled=True
        ).values_list(
            "id", "url", "event_types", "owner_id", "owner__scope"
        )
        _cache = (
            now + CACHE_SECONDS,
            [(i, u, tuple(t or ()), o, scope == ApiKey.Scope.CLIENT) for i, u, t, o, scope in rows],
        )
    return _cache[1]


def _owners_of(events: list[PlatformEvent]) -> list[int | None]:
    """The key each event belongs to (observability/owners.py): a client key's subscription
    hears only its own, so never another key's subscription deliveries (and their URLs)."""
    return event_owners([event.as_document() for event in events])


def _is_echo(event: PlatformEvent) -> bool:
    return event.type.startswith("webhook.") and str((event.data or {}).get("event", "")).startswith("webhook.")


def _reported_subscription(event: PlatformEvent) -> str | None:
    """The subscription whose delivery a `webhook.*` event reports (its outcome, its redrive), if any."""
    if event.type.startswith("webhook."):
        return (event.data or {}).get("subscription_id") or None
    return None


def on_events(events: list[PlatformEvent]) -> None:
    """Create one delivery per (event, matching enabled subscription).

    A subscription hears the outcomes of its own deliveries and of completion
    webhooks, never another subscription's: with N subscriptions to `*`, each of
    an event's N outcomes went to all N again, N² deliveries per event (a client
    key's hundred subscriptions turned one execution into 30,000 deliveries).
    An outcome about an outcome is never delivered (`_is_echo`).
    """
    subscriptions = _enabled()
    if not subscriptions:
        return
    rows = []
    owners: list[int | None] | None = None
    for index, event in enumerate(events):
        if _is_echo(event):
            continue
        reported = _reported_subscription(event)
        body = None
        for sub_id, url, patterns, owner_id, client_owned in subscriptions:
            if (reported is not None and sub_id != reported) or not matches(patterns, event.type):
                continue
            if client_owned:
                if owners is None:
                    owners = _owners_of(events)
                if owners[index] != owner_id:
                    continue
            body = body or outbound.encode_body(event.as_document())
            rows.append(
                Delivery(
                    kind=Delivery.Kind.SUBSCRIPTION,
                    subscription_id=sub_id,
                    event_type=event.type,
                    event_id=event.id,
                    execution_id=event.execution_id,
                    url=url,
                    destination=outbound.destination_of(url),
                    body=body,
                    owner_id=owner_id,
                )
            )
    if rows:
        Delivery.objects.bulk_create(rows)
        transaction.on_commit(delivery.kick)


def create(
    *, url: str, description: str = "", event_types: list[str], headers: dict, enabled: bool = True,
    owner_id: int | None = None,
) -> tuple[Subscription, str]:
    """A new subscription and its generated secret (returned once, never again)."""
    secret = signing.generate_secret()
    with transaction.atomic():
        sub = Subscription.objects.create(
            url=url, description=description, event_types=event_types, headers=headers, enabled=enabled,
            owner_id=owner_id,
        )
        SubscriptionSecret.objects.create(subscription=sub, secret=secret)
    return sub, secret


def retarget(sub: Subscription) -> int:
    """Point the subscription's deliveries not yet delivered at its current URL (after a change)."""
    return Delivery.objects.filter(
        subscription=sub, status__in=[Delivery.Status.PENDING, Delivery.Status.FAILED, Delivery.Status.DEAD]
    ).update(url=sub.url, destination=outbound.destination_of(sub.url))


def rotate_secret(sub: Subscription) -> str:
    """A new current secret; the old ones keep signing for 24 hours (the latest MAX_ACTIVE_SECRETS - 1 of them)."""
    secret = signing.generate_secret()
    now = timezone.now()
    with transaction.atomic():
        sub.secrets.filter(expires_at__isnull=True).update(expires_at=now + ROTATION_GRACE)
        sub.secrets.filter(expires_at__lte=now).delete()
        older = sub.secrets.order_by("-created_at", "-id").values_list("id", flat=True)[MAX_ACTIVE_SECRETS - 1 :]
        sub.secrets.filter(id__in=list(older)).delete()
        SubscriptionSecret.objects.create(subscription=sub, secret=secret, created_at=now)
    return secret


def send_test(sub: Subscription) -> Delivery:
    """Queue a one-shot `webhook.test` event to the subscription (no retries)."""
    now = timezone.now()
    document = {
        # Not in the event log, so no place in its order: 0, below every real id (a
        # receiver that tracks the highest id it has seen is not moved by a test).
        "id": 0,
        "type": "webhook.test",
        "source": "webhook",
        "timestamp": iso(now),
        "data": {"subscription_id": sub.id, "message": "This is a test event from AgentField."},
    }
    with transaction.atomic():
        row = Delivery.objects.create(
            kind=Delivery.Kind.TEST,
            subscription=sub,
            event_type="webhook.test",
            url=sub.url,
            destination=outbound.destination_of(sub.url),
            body=outbound.encode_body(document),
            retries=False,
            owner_id=sub.owner_id,
        )
        transaction.on_commit(delivery.kick)
    return row
