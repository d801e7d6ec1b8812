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
from django.utils import timezone

from agentfield_site.lib import outbound, signing
from agentfield_site.lib.timefmt import iso
from observability.models import PlatformEvent
from observability.type_patterns import matches

from . import delivery
from .completion import encode_body
from .models import Delivery, Subscription, SubscriptionSecret

CACHE_SECONDS = 1.0
ROTATION_GRACE = timedelta(hours=24)

_cache: tuple[float, list[tuple[str, str, tuple[str, ...]]]] | None = None


def invalidate_cache(**kwargs) -> None:
    """Forget the cached subscriptions (connected to Subscription saves and deletes)."""
    global _cache
    _cache = None


def _enabled() -> list[tuple[str, str, tuple[str, ...]]]:
    global _cache
    now = time.monotonic()
    if _cache is None or _cache[0] < now:
        rows = Subscription.objects.filter(enabled=True).values_list("id", "url", "event_types")
        _cache = (now + CACHE_SECONDS, [(i, u, tuple(t or ())) for i, u, t in rows])
    return _cache[1]


def _is_echo(event: PlatformEvent) -> bool:
    return event.type.startswith("webhook.") and str((event.data or {}).get("event", "")).startswith("webhook.")


def on_events(events: list[PlatformEvent]) -> None:
    """Create one delivery per (event, matching enabled subscription)."""
    subscriptions = _enabled()
    if not subscriptions:
        return
    rows = []
    for event in events:
        if _is_echo(event):
            continue
        body = None
        for sub_id, url, patterns in subscriptions:
            if not matches(patterns, event.type):
                continue
            body = body or encode_body(event.as_document())
            rows.append(
                Delivery(
                    kind=Delivery.SUBSCRIPTION,
                    subscription_id=sub_id,
                    event_type=event.type,
                    event_id=event.id,
                    execution_id=event.execution_id,
                    url=url,
                    destination=outbound.destination_of(url),
                    body=body,
                )
            )
    if rows:
        Delivery.objects.bulk_create(rows)
        transaction.on_commit(delivery.kick)


def create(*, url: str, description: str = "", event_types: list[str], headers: dict, enabled: bool = True) -> tuple[Subscription, str]:
    """A new subscription and its generated secret (returned once, never again)."""
    secret = signing.generate_secret()
    with transaction.atomic():
        sub = Subscription.objects.create(
            url=url, description=description, event_types=event_types, headers=headers, enabled=enabled
        )
        SubscriptionSecret.objects.create(subscription=sub, secret=secret)
    return sub, secret


def retarget(sub: Subscription) -> int:
    """Point the subscription's deliveries not yet delivered at its current URL (after a change)."""
    return Delivery.objects.filter(
        subscription=sub, status__in=[Delivery.PENDING, Delivery.FAILED, Delivery.DEAD]
    ).update(url=sub.url, destination=outbound.destination_of(sub.url))


def rotate_secret(sub: Subscription) -> str:
    """A new current secret; the old ones keep signing for 24 hours."""
    secret = signing.generate_secret()
    now = timezone.now()
    with transaction.atomic():
        sub.secrets.filter(expires_at__isnull=True).update(expires_at=now + ROTATION_GRACE)
        sub.secrets.filter(expires_at__lte=now).delete()
        SubscriptionSecret.objects.create(subscription=sub, secret=secret, created_at=now)
    return secret


def send_test(sub: Subscription) -> Delivery:
    """Queue a one-shot `webhook.test` event to the subscription (no retries)."""
    now = timezone.now()
    document = {
        "id": None,
        "type": "webhook.test",
        "source": "webhook",
        "timestamp": iso(now),
        "data": {"subscription_id": sub.id, "message": "This is a test event from AgentField."},
    }
    with transaction.atomic():
        row = Delivery.objects.create(
            kind=Delivery.TEST,
            subscription=sub,
            event_type="webhook.test",
            url=sub.url,
            destination=outbound.destination_of(sub.url),
            body=encode_body(document),
            retries=False,
        )
        transaction.on_commit(delivery.kick)
    return row
