"""Events the collector would not take: their dead letters, the redrive and the clear."""

import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from django.conf import settings
from django.db.models import F
from django.utils import timezone

from agentfield_site.jobs import leases
from agentfield_site.lib import strict_json

from ..models import ForwarderConfig, ForwarderDeadLetter, ForwarderState
from .batches import Batch, Result, Target, send


class NotConfigured(RuntimeError):
    """Redrive without a collector to send to."""


class AlreadyRedriving(RuntimeError):
    """Another redrive (the admin's, the API's, another process's) is sending the dead letters."""


# Held while a redrive sends, renewed with every batch it hears back about: two redrives
# at once (an operator in the admin, another through the API) would both send every
# entry they read before either deleted it, and the collector would get each event twice.
REDRIVE_LEASE = "observability-redrive"
REDRIVE_LEASE_SECONDS = 60.0


def record(failed: Iterable[tuple[Batch, Result]], now: datetime) -> None:
    """Write a dead letter for every event of the batches that failed."""
    ForwarderDeadLetter.objects.bulk_create(
        build(entry, result.error, result.attempts, now) for batch, result in failed for entry in batch.entries
    )


def build(entry: dict, error: str, attempts: int, now: datetime) -> ForwarderDeadLetter:
    """The dead letter of one event the collector would not take.

    Its payload is escaped as the body was (see `outbound.encode_body`): a stored
    infinite number would fail the JSON column's check, and the save with it.
    """
    return ForwarderDeadLetter(
        event_id=entry["event_id"],
        event_type=entry["event_type"],
        event_source=entry["event_source"],
        event_timestamp=datetime.fromisoformat(entry["timestamp"]),
        payload=strict_json.sanitized(entry),
        error_message=error[:2000],
        retry_count=attempts,
        created_at=now,
    )


def redrive(ids: Iterable[int] | None = None) -> dict:
    """Send dead letters again (all, or those in `ids`), one attempt per batch, oldest first.

    Walks the queue by id rather than by offset, so deleting delivered entries
    never makes it skip one. Returns the contract's `{success, message, processed, failed}`.
    One at a time (`REDRIVE_LEASE`): while another runs, `AlreadyRedriving`.
    """
    config = ForwarderConfig.current()
    if config is None:
        raise NotConfigured("No observability webhook is configured to redrive to.")
    holder = uuid.uuid4().hex
    if not leases.acquire(REDRIVE_LEASE, holder, REDRIVE_LEASE_SECONDS):
        raise AlreadyRedriving("Another redrive is sending the dead letters; try again when it has finished.")
    try:
        return _redrive(Target.of(config), ids, holder)
    finally:
        leases.release(REDRIVE_LEASE, holder)


def _redrive(target: Target, ids: Iterable[int] | None, holder: str) -> dict:
    wanted = None if ids is None else sorted(set(ids))
    batch_size = max(1, settings.OBSERVABILITY_BATCH_SIZE)
    processed = failed = 0
    last_id = 0
    with ThreadPoolExecutor(
        max(1, settings.OBSERVABILITY_CONCURRENCY), thread_name_prefix="redrive"
    ) as pool:
        while True:
            rows = ForwarderDeadLetter.objects.filter(id__gt=last_id).order_by("id")
            if wanted is not None:
                rows = rows.filter(id__in=wanted)
            rows = list(rows[: batch_size * 50])
            if not rows:
                break
            last_id = rows[-1].id
            groups = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
            futures = [
                pool.submit(send, target, Batch.of([r.payload for r in group]), 1)
                for group in groups
            ]
            delivered: list[int] = []
            for group, future in zip(groups, futures, strict=True):
                result = future.result()
                leases.acquire(REDRIVE_LEASE, holder, REDRIVE_LEASE_SECONDS)  # still sending
                ids_in_group = [r.id for r in group]
                processed += len(group)
                if result.delivered:
                    delivered.extend(ids_in_group)
                else:
                    failed += len(group)
                    ForwarderDeadLetter.objects.filter(id__in=ids_in_group).update(
                        retry_count=F("retry_count") + result.attempts,
                        error_message=result.error[:2000],
                    )
            ForwarderDeadLetter.objects.filter(id__in=delivered).delete()
            if delivered:
                # Redriven events are forwarded events; the status counts them (not the cursor).
                ForwarderState.objects.filter(pk=ForwarderState.SINGLETON_ID).update(
                    events_forwarded=F("events_forwarded") + len(delivered),
                    last_forwarded_at=timezone.now(),
                    last_error="",
                    last_error_at=None,
                )
    message = (
        f"Redrove {processed} dead letters: {processed - failed} delivered, {failed} still failing."
        if processed
        else "The dead letter queue is empty."
    )
    return {"success": failed == 0, "message": message, "processed": processed, "failed": failed}


def clear() -> int:
    """Drop every dead letter; returns how many."""
    return ForwarderDeadLetter.objects.all().delete()[0]
