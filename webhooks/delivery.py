"""The delivery engine: the one mechanism that sends every outbound webhook.

Delivery rows are the queue. A sender claims many due rows in one short
transaction (PostgreSQL: `SELECT ... FOR UPDATE SKIP LOCKED`; SQLite, whose
IMMEDIATE transactions already serialize writers: a conditional UPDATE), leases
them, sends them concurrently over keep-alive sessions, then records attempts in
bulk and outcomes with targeted updates guarded by the lease token, so a sender
whose lease lapsed (it hung, or was killed) cannot overwrite the row's newer
state. A lapsed lease makes the row due again: at least once, and receivers
de-duplicate on the stable `webhook-id`.

Outcome events, one per outcome and never one per retry: `webhook.delivered`;
`webhook.failed` once when a delivery first fails and goes into retries (and for
a one-shot test send that fails); `webhook.dead_lettered`; `webhook.redriven`.

django-q2 only wakes this up (`kick` after commit, the sweeper tick for due
retries); its own retry is not the policy: the row's schedule is.
"""

import logging
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from agentfield_site.lib import safe_http, signing
from agentfield_site.lib.backoff import delay_for, honour_retry_after
from observability.events import build, publish_many

from .models import Attempt, Delivery, Subscription, SubscriptionSecret

log = logging.getLogger(__name__)

USER_AGENT = "AgentField-Webhooks/0.1.0"
TASK = "webhooks.tasks.send_due"
# How long one `send_due` call keeps claiming before handing over to a new task,
# so one worker is not held forever under a constant stream of deliveries.
RUN_SECONDS = 30.0
# Recorded outcomes are flushed in groups: bulk writes, but a slow receiver in a
# batch does not hold back the others' results for long.
FLUSH_EVERY = 0.05


def _kick_key() -> str | None:
    """The shared "a send task is queued and has not started" flag, when the cache is shared.

    A per-process cache (the embedded default) cannot tell a web process that a
    worker started the task, so there every commit enqueues its own.
    """
    if "locmem" in settings.CACHES["default"]["BACKEND"].lower():
        return None
    return f"webhooks:send-due-queued:{settings.Q_CLUSTER['name']}"


def kick() -> None:
    """Ask a worker to send due deliveries (call on commit; losing one costs latency only).

    Under load many transactions commit while one send task waits in the queue;
    that task will see all their rows, so they add no second one. The task clears
    the flag before its first claim, so a row committed later always gets a task.
    """
    from django_q.tasks import async_task

    key = _kick_key()
    try:
        if key and not cache.add(key, 1, timeout=1.0):
            return
        async_task(TASK, task_name="webhooks.send_due")
    except Exception:  # the sweeper tick picks the rows up anyway
        log.exception("could not enqueue %s", TASK)


@dataclass
class _Job:
    """Everything a sender thread needs; no ORM access off the main thread."""

    delivery: Delivery
    url: str
    headers: dict
    secrets: list[str]
    skip_reason: str = ""


@dataclass
class _Result:
    job: _Job
    started_at: datetime
    outcome: safe_http.Outcome


# --- claiming -------------------------------------------------------------------

def claim(limit: int) -> tuple[str, list[Delivery]]:
    """Lease up to `limit` due deliveries in one statement; returns the lease token and the rows.

    `UPDATE ... WHERE id IN (due ids) RETURNING *`: on PostgreSQL the inner select
    takes `FOR UPDATE SKIP LOCKED` so concurrent senders split the due rows
    instead of queueing behind each other; on SQLite the single statement is
    atomic on its own (one writer at a time).
    """
    table = Delivery._meta.db_table
    ops = connection.ops
    now = timezone.now()
    token = uuid.uuid4().hex
    lock = " FOR UPDATE SKIP LOCKED" if connection.vendor == "postgresql" else ""
    sql = (
        f"UPDATE {table} SET status = %s, lease_token = %s, lease_until = %s "
        f"WHERE id IN (SELECT id FROM {table} WHERE status = %s AND next_attempt_at <= %s "
        f"ORDER BY next_attempt_at LIMIT %s{lock}) RETURNING *"
    )
    params = [
        Delivery.IN_FLIGHT,
        token,
        ops.adapt_datetimefield_value(now + timedelta(seconds=settings.WEBHOOK_LEASE_SECONDS)),
        Delivery.PENDING,
        ops.adapt_datetimefield_value(now),
        limit,
    ]
    with transaction.atomic():
        rows = list(Delivery.objects.raw(sql, params))
    return token, rows


def reclaim_expired() -> int:
    """Make deliveries whose sender died (lease lapsed) due again."""
    now = timezone.now()
    lapsed = Delivery.objects.filter(status=Delivery.IN_FLIGHT, lease_until__lt=now)
    # Read first: the sweeper asks every tick, and on SQLite even a no-op UPDATE takes the write lock.
    if not lapsed.exists():
        return 0
    return lapsed.update(status=Delivery.PENDING, next_attempt_at=now, lease_token="", lease_until=None)


def _jobs(rows: list[Delivery]) -> list[_Job]:
    sub_ids = {r.subscription_id for r in rows if r.subscription_id}
    secrets: dict[str, list[str]] = defaultdict(list)
    subs = Subscription.objects.in_bulk(sub_ids) if sub_ids else {}
    if sub_ids:
        now = timezone.now()
        for sub_id, secret in (
            SubscriptionSecret.objects.filter(subscription_id__in=sub_ids)
            .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
            .order_by("-created_at", "-id")
            .values_list("subscription_id", "secret")
        ):
            secrets[sub_id].append(secret)
    jobs = []
    for row in rows:
        row.body = bytes(row.body)  # PostgreSQL hands back a memoryview
        if row.subscription_id:
            sub = subs.get(row.subscription_id)
            if sub is None:
                jobs.append(_Job(row, row.url, {}, [], "the subscription was deleted"))
            elif not sub.enabled and row.kind != Delivery.TEST:
                jobs.append(_Job(row, sub.url, {}, [], f"the subscription is disabled: {sub.disabled_reason}"))
            else:
                jobs.append(_Job(row, sub.url, dict(sub.headers or {}), secrets[sub.id]))
        else:
            jobs.append(_Job(row, row.url, dict(row.headers or {}), [row.secret] if row.secret else []))
    return jobs


# --- sending ---------------------------------------------------------------------

_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_local = threading.local()


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(settings.WEBHOOK_CONCURRENCY, thread_name_prefix="webhook-send")
        return _pool


def _session():
    # One keep-alive session per sender thread: connections to a receiver are reused.
    session = getattr(_local, "session", None)
    if session is None:
        session = _local.session = safe_http.new_session(pool_size=4)
    return session


def request_headers(job: _Job) -> dict[str, str]:
    """Fixed headers, the caller's custom headers, then fresh signatures for this attempt."""
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    headers.update(job.headers)
    headers.update(signing.sign(job.delivery.body, job.delivery.webhook_id, job.secrets))
    return headers


def _send(job: _Job) -> _Result:
    started = timezone.now()
    if job.skip_reason:
        return _Result(job, started, safe_http.Outcome(error=job.skip_reason))
    outcome = safe_http.post(_session(), job.url, job.delivery.body, request_headers(job), settings.WEBHOOK_TIMEOUT)
    return _Result(job, started, outcome)


# --- recording -------------------------------------------------------------------

def _verdict(row: Delivery, result: _Result) -> tuple[str, float | None]:
    """(attempt outcome, retry delay) per the contract's rules."""
    outcome = result.outcome
    if outcome.ok:
        return Attempt.DELIVERED, None
    if result.job.skip_reason or outcome.status == 410:
        return Attempt.DEAD, None
    if not row.retries:
        return Attempt.FAILED, None
    delay = delay_for(row.attempts + 1 - row.budget_base, settings.WEBHOOK_RETRY_SCHEDULE)
    if delay is None:
        return Attempt.DEAD, None
    return Attempt.RETRY, honour_retry_after(outcome.retry_after, delay)


def _error_text(outcome: safe_http.Outcome) -> str:
    if outcome.error:
        return outcome.error
    if outcome.ok:
        return ""
    if outcome.status is not None and 300 <= outcome.status < 400:
        return f"HTTP {outcome.status}: redirects are not followed"
    return f"HTTP {outcome.status}"


def _event(row: Delivery, event_type: str, status: str, outcome: safe_http.Outcome, error: str, url: str):
    return build(
        event_type,
        execution_id=row.execution_id,
        status=status,
        data={
            "delivery_id": row.id,
            "webhook_id": row.webhook_id,
            "event": row.event_type,
            "url": url,
            "subscription_id": row.subscription_id,
            "attempts": row.attempts + 1,
            "http_status": outcome.status,
            "error": error or None,
        },
    )


def record(token: str, results: list[_Result]) -> None:
    """Write attempts in bulk and outcomes with targeted updates, in one transaction.

    Every update is conditional on the row still being leased to `token`. A sender
    whose lease lapsed (it stalled and the row was sent again) logs its attempt
    but decides nothing and announces nothing.
    """
    now = timezone.now()
    attempts: list[Attempt] = []
    delivered: dict[int | None, list[_Result]] = defaultdict(list)
    singles: list[tuple[_Result, str, dict]] = []
    for result in results:
        row, outcome = result.job.delivery, result.outcome
        verdict, delay = _verdict(row, result)
        error = _error_text(outcome)
        attempts.append(
            Attempt(
                delivery_id=row.id,
                number=row.attempts + 1,
                started_at=result.started_at,
                duration_ms=outcome.duration_ms,
                status_code=outcome.status,
                response_headers=outcome.headers,
                response_body=outcome.body,
                error=error,
                outcome=verdict,
            )
        )
        if verdict == Attempt.DELIVERED:
            delivered[outcome.status].append(result)
            continue
        fields = {"last_status": outcome.status, "last_error": error[:4000]}
        if verdict == Attempt.RETRY:
            fields.update(status=Delivery.PENDING, next_attempt_at=now + timedelta(seconds=delay))
        elif verdict == Attempt.FAILED:
            fields.update(status=Delivery.FAILED)
        else:
            fields.update(status=Delivery.DEAD, dead_lettered_at=now)
        singles.append((result, verdict, fields))

    events = []
    sub_ok: set[str] = set()
    sub_failing: set[str] = set()
    sub_gone: set[str] = set()
    with transaction.atomic():
        _insert_attempts(attempts)
        for http_status, group in delivered.items():
            live = _mark_delivered(token, [r.job.delivery.id for r in group], http_status, now)
            for result in group:
                row = result.job.delivery
                if row.id in live:
                    events.append(_event(row, "webhook.delivered", "delivered", result.outcome, "", result.job.url))
                    if row.subscription_id:
                        sub_ok.add(row.subscription_id)
        mine = Delivery.objects.filter(lease_token=token, status=Delivery.IN_FLIGHT)
        lease_free = {"lease_token": "", "lease_until": None, "attempts": F("attempts") + 1}
        for result, verdict, fields in singles:
            row = result.job.delivery
            if not mine.filter(id=row.id).update(**fields, **lease_free):
                continue
            if row.subscription_id and not result.job.skip_reason:
                (sub_gone if result.outcome.status == 410 else sub_failing).add(row.subscription_id)
            error = fields["last_error"]
            if verdict == Attempt.RETRY:
                if row.attempts == row.budget_base:  # first failure of this budget: once, not per retry
                    events.append(_event(row, "webhook.failed", "retrying", result.outcome, error, result.job.url))
            elif verdict == Attempt.FAILED:
                events.append(_event(row, "webhook.failed", "failed", result.outcome, error, result.job.url))
            else:
                events.append(_event(row, "webhook.dead_lettered", "dead", result.outcome, error, result.job.url))
        if sub_ok:
            Subscription.objects.filter(id__in=sub_ok, failing_since__isnull=False).update(failing_since=None)
        if sub_failing or sub_gone:
            _note_failures(sub_failing | sub_gone, sub_gone, now)
        publish_many(events)


_ATTEMPT_COLUMNS = (
    "delivery_id", "number", "started_at", "duration_ms", "status_code",
    "response_headers", "response_body", "error", "outcome",
)


def _insert_attempts(attempts: list[Attempt]) -> None:
    """Insert attempt rows; on PostgreSQL with COPY, several times cheaper than a bulk INSERT."""
    if connection.vendor != "postgresql":
        Attempt.objects.bulk_create(attempts)
        return
    from psycopg.types.json import Jsonb

    columns = ", ".join(_ATTEMPT_COLUMNS)
    with connection.cursor() as cursor, cursor.cursor.copy(
        f"COPY {Attempt._meta.db_table} ({columns}) FROM STDIN"
    ) as copy:
        for a in attempts:
            copy.write_row((
                a.delivery_id, a.number, a.started_at, a.duration_ms, a.status_code,
                Jsonb(a.response_headers), a.response_body, a.error, a.outcome,
            ))


def _mark_delivered(token: str, ids: list[int], http_status: int | None, now: datetime) -> set[int]:
    """One UPDATE for a group of delivered rows still leased to `token`; returns the ids it changed."""
    table = Delivery._meta.db_table
    marks = ", ".join(["%s"] * len(ids))
    sql = (
        f"UPDATE {table} SET status = %s, delivered_at = %s, last_status = %s, last_error = '', "
        f"lease_token = '', lease_until = NULL, attempts = attempts + 1 "
        f"WHERE lease_token = %s AND status = %s AND id IN ({marks}) RETURNING id"
    )
    params = [Delivery.DELIVERED, connection.ops.adapt_datetimefield_value(now), http_status, token, Delivery.IN_FLIGHT, *ids]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return {row[0] for row in cursor.fetchall()}


def _note_failures(failing: set[str], gone: set[str], now: datetime) -> None:
    """Start failure clocks; disable on 410 and after WEBHOOK_DISABLE_AFTER_DAYS of failure."""
    Subscription.objects.filter(id__in=failing, failing_since__isnull=True).update(failing_since=now)
    if gone:
        Subscription.objects.filter(id__in=gone, enabled=True).update(
            enabled=False, disabled_reason="The receiver answered 410 Gone."
        )
    cutoff = now - timedelta(days=settings.WEBHOOK_DISABLE_AFTER_DAYS)
    Subscription.objects.filter(id__in=failing, enabled=True, failing_since__lt=cutoff).update(
        enabled=False,
        disabled_reason=f"Every delivery failed for {settings.WEBHOOK_DISABLE_AFTER_DAYS:g} days.",
    )


def _record_surviving(token: str, results: list[_Result]) -> int:
    """`record`, tolerating deliveries deleted while in flight (their subscription was deleted)."""
    try:
        record(token, results)
    except IntegrityError:
        existing = set(
            Delivery.objects.filter(id__in=[r.job.delivery.id for r in results]).values_list("id", flat=True)
        )
        results = [r for r in results if r.job.delivery.id in existing]
        record(token, results)
    return len(results)


# --- the loop --------------------------------------------------------------------

def send_due(run_seconds: float = RUN_SECONDS) -> int:
    """Claim, send and record due deliveries until none are due; returns attempts recorded.

    Keeps up to WEBHOOK_BATCH_SIZE deliveries in flight over WEBHOOK_CONCURRENCY
    threads, claiming more as sends finish and flushing results in groups.
    """
    key = _kick_key()
    if key:
        cache.delete(key)
    batch = max(1, settings.WEBHOOK_BATCH_SIZE)
    executor = _executor()
    deadline = time.monotonic() + run_seconds
    inflight: dict[Future, str] = {}
    finished: dict[str, list[_Result]] = defaultdict(list)
    last_flush = time.monotonic()
    drained = False
    helped = False
    recorded = 0
    while True:
        if not drained and len(inflight) <= batch // 2:
            want = batch - len(inflight)
            token, rows = claim(want)
            for job in _jobs(rows):
                inflight[executor.submit(_send, job)] = token
            drained = not rows or time.monotonic() > deadline
            if len(rows) == want and not helped:
                # A backlog: wake one more worker process to share it (it claims
                # other rows); each helper may call one more while the backlog lasts.
                helped = True
                transaction.on_commit(kick)
        if inflight:
            done, _ = wait(list(inflight), timeout=FLUSH_EVERY, return_when=FIRST_COMPLETED)
            for future in done:
                finished[inflight.pop(future)].append(future.result())
        pending_results = sum(len(v) for v in finished.values())
        if pending_results and (
            not inflight or pending_results >= batch // 2 or time.monotonic() - last_flush >= FLUSH_EVERY
        ):
            for token, results in finished.items():
                recorded += _record_surviving(token, results)
            finished.clear()
            last_flush = time.monotonic()
        if drained and not inflight and not finished:
            break
    if time.monotonic() > deadline and Delivery.objects.filter(
        status=Delivery.PENDING, next_attempt_at__lte=timezone.now()
    ).exists():
        kick()  # more work than one run: hand over to a fresh task
    return recorded


_last_tick_kick = 0.0


def tick() -> None:
    """Sweeper tick: reclaim lapsed leases and wake a sender when retries are due."""
    global _last_tick_kick
    reclaim_expired()
    now = time.monotonic()
    # At most one kick per half second: a kicked task drains everything that is due.
    if now - _last_tick_kick < 0.5:
        return
    if Delivery.objects.filter(status=Delivery.PENDING, next_attempt_at__lte=timezone.now()).exists():
        _last_tick_kick = now
        kick()


# --- redrive ---------------------------------------------------------------------

def redrive(deliveries: QuerySet, statuses: Iterable[str] = (Delivery.DEAD,)) -> int:
    """Give deliveries in `statuses` a fresh retry budget under the same webhook-id; returns how many."""
    statuses = list(statuses)
    now = timezone.now()
    with transaction.atomic():
        rows = list(
            deliveries.filter(status__in=statuses).values("id", "webhook_id", "execution_id", "event_type", "subscription_id", "attempts", "url")
        )
        if not rows:
            return 0
        queued = Delivery.objects.filter(id__in=[r["id"] for r in rows], status__in=statuses).update(
            status=Delivery.PENDING,
            next_attempt_at=now,
            budget_base=F("attempts"),
            dead_lettered_at=None,
            lease_token="",
            lease_until=None,
        )
        publish_many(
            build(
                "webhook.redriven",
                execution_id=r["execution_id"],
                status="pending",
                data={
                    "delivery_id": r["id"],
                    "webhook_id": r["webhook_id"],
                    "event": r["event_type"],
                    "url": r["url"],
                    "subscription_id": r["subscription_id"],
                    "attempts": r["attempts"],
                },
            )
            for r in rows
        )
        transaction.on_commit(kick)
    return queued
