"""Completion webhooks: what the executions app calls, and nothing else.

`validate_webhook` checks a caller's `webhook` object at submission,
`enqueue_completion` turns a terminal execution into exactly one delivery (inside
the transaction that made it terminal), `webhook_events` reports the attempts.
"""

from collections.abc import Sequence

from django.db import transaction

from agentfield_site.lib import outbound
from agentfield_site.lib.timefmt import iso

from . import delivery
from .models import Attempt, Delivery


def validate_webhook(value: object) -> tuple[dict | None, str | None]:
    """({url, secret, headers}, None) for a valid webhook object, else (None, reason).

    `None` (no webhook given) is (None, None).
    """
    if value is None:
        return None, None
    if not isinstance(value, dict):
        return None, "webhook must be an object with url, secret and headers"
    try:
        return {
            "url": outbound.clean_url(value.get("url")),
            "secret": outbound.clean_secret(value.get("secret")),
            "headers": outbound.clean_headers(value.get("headers")),
        }, None
    except outbound.InvalidTarget as exc:
        return None, str(exc)


def enqueue_completion(
    *, execution_id: str, url: str, secret: str, headers: dict, payload: dict, owner_id: int | None = None
) -> None:
    """Create the execution's one completion delivery and send it after commit.

    Call inside the transaction that makes the execution terminal; a second call
    for the same execution (a repeated terminal callback) changes nothing.
    """
    row = Delivery(
        kind=Delivery.Kind.COMPLETION,
        event_type=str(payload.get("event") or "execution.completed"),
        execution_id=execution_id,
        url=url,
        destination=outbound.destination_of(url),
        headers=headers or {},
        secret=secret or "",
        body=outbound.encode_body(payload),
        owner_id=owner_id,
    )
    with transaction.atomic():
        # ON CONFLICT DO NOTHING: the unique constraint, not a read, makes it idempotent.
        Delivery.objects.bulk_create([row], ignore_conflicts=True)
        transaction.on_commit(delivery.kick)


# An attempt as the status document reports it: the last attempt of a dead-lettered
# delivery says `dead`, so a reader (the dashboard after a reload) tells it from a retry.
ATTEMPT_STATUS = {Attempt.Outcome.DELIVERED: "delivered", Attempt.Outcome.DEAD: "dead"}


def webhook_events(execution_ids: Sequence[str]) -> dict[str, list[dict]]:
    """Per execution, its completion webhook attempts `[{id, event_type, status, http_status, error_message, created_at}]`.

    A delivery that has not been attempted yet shows as one `pending` entry.
    """
    ids = [i for i in execution_ids if i]
    result: dict[str, list[dict]] = {i: [] for i in ids}
    if not ids:
        return result
    rows = (
        Delivery.objects.filter(kind=Delivery.Kind.COMPLETION, execution_id__in=ids)
        .values("id", "execution_id", "event_type", "status", "created_at", "attempt_log__id",
                "attempt_log__number", "attempt_log__status_code", "attempt_log__error",
                "attempt_log__outcome", "attempt_log__started_at")
        .order_by("id", "attempt_log__number")
    )
    for row in rows:
        events = result[row["execution_id"]]
        if row["attempt_log__id"] is None:
            events.append({
                "id": f"{row['id']}-0",
                "event_type": row["event_type"],
                "status": row["status"],
                "http_status": None,
                "error_message": None,
                "created_at": iso(row["created_at"]),
            })
            continue
        events.append({
            "id": f"{row['id']}-{row['attempt_log__number']}",
            "event_type": row["event_type"],
            "status": ATTEMPT_STATUS.get(row["attempt_log__outcome"], "failed"),
            "http_status": row["attempt_log__status_code"],
            "error_message": row["attempt_log__error"] or None,
            "created_at": iso(row["attempt_log__started_at"]),
        })
    return result

