"""Completion webhooks: what the executions app calls, and nothing else.

`validate_webhook` checks a caller's `webhook` object at submission,
`enqueue_completion` turns a terminal execution into exactly one delivery (inside
the transaction that made it terminal), `webhook_events` reports the attempts.
"""

import json
from collections.abc import Sequence
from urllib.parse import urlsplit

from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction

from agentfield_site.lib import safe_http

from . import delivery as engine
from .models import Attempt, Delivery

MAX_HEADERS = 20
MAX_HEADER_LENGTH = 512
MAX_SECRET_LENGTH = 4096
RESERVED_HEADERS = {"x-agentfield-signature", "content-type", "host", "content-length"}


def header_problem(headers: object) -> str | None:
    """Why a custom header map is refused, or None (shared with subscriptions)."""
    if not isinstance(headers, dict):
        return "headers must be an object of name: value strings"
    if len(headers) > MAX_HEADERS:
        return f"at most {MAX_HEADERS} headers are allowed"
    for name, value in headers.items():
        if not isinstance(name, str) or not name.strip():
            return "header names must be non-empty strings"
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            return f"header {name!r} must have a string value"
        text = str(value)
        if len(name) > MAX_HEADER_LENGTH or len(text) > MAX_HEADER_LENGTH:
            return f"header {name[:40]!r} is longer than {MAX_HEADER_LENGTH} characters"
        if any(c in name + text for c in "\r\n\0") or any(c in name for c in " :\t"):
            return f"header {name[:40]!r} contains forbidden characters"
        lower = name.lower()
        if lower in RESERVED_HEADERS or lower.startswith("webhook-"):
            return f"header {name!r} is reserved"
    return None


def url_problem(url: object) -> str | None:
    """Why a webhook URL is refused, or None (scheme, credentials, blocked address)."""
    if not isinstance(url, str) or not url.strip():
        return "url is required"
    if len(url) > 2048:
        return "url is longer than 2048 characters"
    try:
        safe_http.check_url(url.strip())
    except safe_http.UnsafeURL as exc:
        return str(exc)
    return None


def validate_webhook(value: object) -> tuple[dict | None, str | None]:
    """({url, secret, headers}, None) for a valid webhook object, else (None, reason).

    `None` (no webhook given) is (None, None).
    """
    if value is None:
        return None, None
    if not isinstance(value, dict):
        return None, "webhook must be an object with url, secret and headers"
    problem = url_problem(value.get("url"))
    if problem:
        return None, problem
    secret = value.get("secret") or ""
    if not isinstance(secret, str):
        return None, "secret must be a string"
    if len(secret) > MAX_SECRET_LENGTH:
        return None, f"secret is longer than {MAX_SECRET_LENGTH} characters"
    headers = value.get("headers") or {}
    problem = header_problem(headers)
    if problem:
        return None, problem
    return {"url": value["url"].strip(), "secret": secret, "headers": {k: str(v) for k, v in headers.items()}}, None


def encode_body(document: dict) -> bytes:
    """The bytes sent and signed: compact JSON, UTF-8, produced once and stored."""
    return json.dumps(document, cls=DjangoJSONEncoder, separators=(",", ":"), ensure_ascii=False).encode()


def enqueue_completion(
    *, execution_id: str, url: str, secret: str, headers: dict, payload: dict, owner_id: int | None = None
) -> None:
    """Create the execution's one completion delivery and send it after commit.

    Call inside the transaction that makes the execution terminal; a second call
    for the same execution (a repeated terminal callback) changes nothing.
    """
    row = Delivery(
        kind=Delivery.COMPLETION,
        event_type=str(payload.get("event") or "execution.completed"),
        execution_id=execution_id,
        url=url,
        target_host=(urlsplit(url).hostname or "")[:255],
        headers=headers or {},
        secret=secret or "",
        body=encode_body(payload),
        owner_id=owner_id,
    )
    with transaction.atomic():
        # ON CONFLICT DO NOTHING: the unique constraint, not a read, makes it idempotent.
        Delivery.objects.bulk_create([row], ignore_conflicts=True)
        transaction.on_commit(engine.kick)


def webhook_events(execution_ids: Sequence[str]) -> dict[str, list[dict]]:
    """Per execution, its completion webhook attempts `[{id, event_type, status, http_status, error_message, created_at}]`.

    A delivery that has not been attempted yet shows as one `pending` entry.
    """
    ids = [i for i in execution_ids if i]
    result: dict[str, list[dict]] = {i: [] for i in ids}
    if not ids:
        return result
    rows = (
        Delivery.objects.filter(kind=Delivery.COMPLETION, execution_id__in=ids)
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
                "created_at": _iso(row["created_at"]),
            })
            continue
        events.append({
            "id": f"{row['id']}-{row['attempt_log__number']}",
            "event_type": row["event_type"],
            "status": "delivered" if row["attempt_log__outcome"] == Attempt.DELIVERED else "failed",
            "http_status": row["attempt_log__status_code"],
            "error_message": row["attempt_log__error"] or None,
            "created_at": _iso(row["attempt_log__started_at"]),
        })
    return result


def _iso(value) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None
