"""Keep the event log bounded: drop events older than EVENT_RETENTION_DAYS."""

import time
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from .models import PlatformEvent

PRUNE_EVERY_SECONDS = 300.0
_last_prune = 0.0


def prune(batch: int = 5000) -> int:
    """Delete expired events in batches; returns how many went."""
    cutoff = timezone.now() - timedelta(days=settings.EVENT_RETENTION_DAYS)
    total = 0
    while True:
        ids = list(PlatformEvent.objects.filter(timestamp__lt=cutoff).values_list("id", flat=True)[:batch])
        if not ids:
            return total
        total += PlatformEvent.objects.filter(id__in=ids).delete()[0]


def prune_if_due() -> None:
    """Sweeper tick: prune at most every few minutes."""
    global _last_prune
    if time.monotonic() - _last_prune < PRUNE_EVERY_SECONDS:
        return
    _last_prune = time.monotonic()
    prune()
