"""The delivery engine: the one mechanism that sends every outbound webhook.

Delivery rows are the queue. A sender claims due rows in one short, serialized
transaction, only as many as it can start at once, never more than
WEBHOOK_MAX_IN_FLIGHT_PER_DESTINATION in flight to one destination across all
workers, round-robin across destinations, and nothing from a destination whose
circuit breaker is open (`destinations.py`). The claimed rows go out at once on
the process's asyncio client (`agentfield_site.lib.outbound`), so a receiver that
never answers holds a socket, not a thread, and cannot hold up anyone else's
deliveries. Results are recorded in bulk, with outcomes written by targeted
updates guarded by the lease token: a sender whose lease lapsed (it hung, or was
killed) cannot overwrite the row's newer state. Leases are renewed while their
requests are alive, so a slow receiver is never sent a duplicate, and a lapsed
lease (a killed worker) makes the row due again: at least once, and receivers
de-duplicate on the stable `webhook-id`.

Outcome events, one per outcome and never one per retry: `webhook.delivered`;
`webhook.failed` once when a delivery first fails and goes into retries (and for
a one-shot test send that fails); `webhook.dead_lettered`; `webhook.redriven`.

django-q2 only wakes this up (`kick` after commit, the sweeper tick for due
retries); its own retry is not the policy: the row's schedule is.
"""

import json
import logging
import os
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from queue import Empty, SimpleQueue
from typing import NamedTuple

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from agentfield_site.jobs import kicks, leases, stopping
from agentfield_site.lib import outbound, tasks
from agentfield_site.lib.backoff import delay_for, honour_retry_after
from agentfield_site.lib.batched_sql import together
from agentfield_site.lib.logs import Repeated
from agentfield_site.lib.sqlite_writer import one_writer
from observability.events import build, publish_many

from . import destinations
from .models import Attempt, Delivery, Subscription, SubscriptionSecret

log = logging.getLogger(__name__)
_enqueue_failed = Repeated(log, "could not enqueue %s; the sweeper tick picks the rows up", logging.ERROR)

TASK = "webhooks.tasks.send_due"
# The `status` of the outcome events (above): delivered, failed and retrying,
# failed for good, dead-lettered, and pending again (redriven).
EVENT_STATUSES = ("delivered", "retrying", "failed", "dead", "pending")
# How long one `send_due` call keeps claiming before handing over to a new task,
# so one worker is not held forever under a constant stream of deliveries.
RUN_SECONDS = 10.0
# Once a stop is requested (`jobs.stopping`), requests in flight get this long to
# end; the rest are cut off and handed back: due again, no attempt recorded (a
# receiver that already had one gets it again, under the same `webhook-id`).
STOP_GRACE = 2.0
# While requests are in flight, look for newly due rows this often, and less
# often after a claim that found nothing (new rows also wake a task through
# `kick`; this is the fallback when every worker is busy). A claim holds the
# write lock on SQLite, so idle polling is not free.
CLAIM_EVERY = 0.05
IDLE_CLAIM_EVERY = 0.1
# Claims take a transaction-level advisory lock on PostgreSQL so that the
# per-destination in-flight counts they read cannot be raced by another claim.
_CLAIM_LOCK_KEY = 0x4146_434C  # "AFCL"


# The wake-up's coalescing lease: held from a kick until the woken task starts (or a second passes).
KICK = "webhooks-send-due-queued"
KICK_WINDOW = 1.0
# Held by a running sender with room for more requests: it claims every
# CLAIM_EVERY, so rows that come due need no other wake-up, and the sweeper's
# tick wakes no one (a second sender would only compete for the places of the
# destinations the first one is filling). Renewed every LISTEN_RENEW seconds;
# a sender that fills up, winds down or dies lets it go (or lapse).
LISTENING = "webhooks-sender-listening"
LISTEN_SECONDS = 2.0
LISTEN_RENEW = 0.5


def kick() -> None:
    """Ask a worker to send due deliveries (call on commit; losing one costs latency only).

    Under load many transactions commit while one send task waits in the queue;
    that task will see all their rows, so they add no second one. The task clears
    the wake-up before its first claim, so a row committed later always gets a task.
    """
    try:
        kicks.coalesced(KICK, _enqueue, KICK_WINDOW)
    except Exception:  # the sweeper tick picks the rows up anyway
        _enqueue_failed.log(TASK)


def _enqueue() -> None:
    tasks.enqueue(TASK, cluster=settings.DELIVERY_CLUSTER, name="webhooks.send_due")


@dataclass(slots=True)
class Claimed:
    """What the engine reads of a leased delivery row: the columns its attempt and outcome need.

    Cheaper than model instances (a claim makes many), and as plain as the rows
    that `claim` returns should be: nothing here can query the database.
    """

    id: int
    webhook_id: str
    kind: str
    event_type: str
    execution_id: str
    subscription_id: str | None
    url: str
    destination: str
    headers: dict
    secret: str
    body: bytes
    retries: bool
    attempts: int
    budget_base: int
    status: str
    lease_token: str
    lease_until: datetime


# The columns `Claimed` is made of, in its order, up to `status`.
_CLAIMED_COLUMNS = [f for f in Claimed.__slots__ if f not in ("status", "lease_token", "lease_until")]


@dataclass
class _Job:
    """A claimed row and what its attempt needs; no ORM access off the claiming thread."""

    delivery: Claimed
    token: str
    request: outbound.Request
    skip_reason: str = ""


@dataclass
class _Result:
    job: _Job
    started_at: datetime
    outcome: outbound.Outcome


# --- claiming -------------------------------------------------------------------

def _pick(candidates: list[tuple[int, str]], room: dict[str, int], limit: int) -> list[int]:
    """Round-robin across destinations, oldest first within each, using up each one's `room`."""
    queues: dict[str, deque[int]] = {}
    for row_id, destination in candidates:
        if room[destination] > 0:
            queues.setdefault(destination, deque()).append(row_id)
    picked: list[int] = []
    while queues and len(picked) < limit:
        for destination in list(queues):
            if room[destination] <= 0 or not queues[destination]:
                del queues[destination]
                continue
            picked.append(queues[destination].popleft())
            room[destination] -= 1
            if len(picked) == limit:
                break
    return picked


# A row whose request has ended, as (id, lease token): in flight in the table until its
# result is written, but no longer on the wire, so its place is free.
Ended = Collection[tuple[int, str]]


def _busy_query(ended: Ended = ()) -> tuple[str, list]:
    """How many requests each destination has on the wire: rows in flight, less the `ended` ones.

    A row is left out only while it still carries the lease token it ended
    under: once its result is written it is no longer in flight anyway, and if
    it is claimed again (a new token) its new request counts.
    """
    table = Delivery._meta.db_table
    sql = f"SELECT destination, COUNT(*) FROM {table} WHERE status = %s"
    params: list = [Delivery.Status.IN_FLIGHT]
    if ended:
        # The pairs as two arrays, or one JSON array on SQLite: the statement's text
        # is the same whatever their number, and it never runs into a parameter limit.
        if connection.vendor == "postgresql":
            pairs, values = "SELECT * FROM unnest(%s::bigint[], %s::text[])", [list(c) for c in zip(*ended, strict=True)]
        else:
            pairs = "SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(%s)"
            values = [json.dumps(list(ended))]
        # NOT IN: neither an id nor a lease token is ever NULL (a NULL would leave every row out).
        sql += f" AND (id, lease_token) NOT IN ({pairs})"
        params += values
    return sql + " GROUP BY destination", params


def _nothing_ended() -> Ended:
    return ()


def _room(gate_rows: list[tuple], busy_rows: list[tuple]) -> tuple[destinations.Gates, dict[str, int]]:
    """The breakers' gates, and how many more requests each destination may have in flight.

    From the rows of `destinations.gates_query` and `_busy_query`.
    """
    cap = max(1, settings.WEBHOOK_MAX_IN_FLIGHT_PER_DESTINATION)
    gates = destinations.gates_from(gate_rows)
    busy = dict(busy_rows)
    room: dict[str, int] = defaultdict(lambda: cap)
    for destination, n in busy.items():
        room[destination] = cap - n
    for destination in gates.probing:
        room[destination] = 1 - busy.get(destination, 0)
    for destination in gates.blocked:
        room[destination] = 0
    return gates, room


def _room_now(now: datetime, ended: Ended = ()) -> tuple[destinations.Gates, dict[str, int]]:
    """`_room` as the database has it now (`ended` as for `claim`)."""
    with connection.cursor() as cursor:
        gate_rows, busy_rows = together(cursor, [destinations.gates_query(now), _busy_query(ended)])
    return _room(gate_rows, busy_rows)


def sendable_now() -> bool:
    """True when a claim would find something: a due row whose destination has room.

    Rows held back by an open breaker or a full destination wake no one.
    """
    now = timezone.now()
    _, room = _room_now(now)
    full = [d for d, r in room.items() if r <= 0]
    return Delivery.objects.filter(status=Delivery.Status.PENDING, next_attempt_at__lte=now).exclude(
        destination__in=full
    ).exists()


def _due_query(now: datetime, skip: set[str], limit: int) -> tuple[str, list]:
    """(id, destination) of the oldest due deliveries, leaving out the `skip` destinations."""
    sql = f"SELECT id, destination FROM {Delivery._meta.db_table} WHERE status = %s AND next_attempt_at <= %s"
    params: list = [Delivery.Status.PENDING, connection.ops.adapt_datetimefield_value(now)]
    if skip:
        sql += f" AND destination NOT IN ({', '.join(['%s'] * len(skip))})"
        params += sorted(skip)
    return sql + " ORDER BY next_attempt_at, id LIMIT %s", [*params, limit]


def _due(now: datetime, skip: set[str], limit: int) -> list[tuple[int, str]]:
    with connection.cursor() as cursor:
        cursor.execute(*_due_query(now, skip, limit))
        return cursor.fetchall()


# The by-destination index's own condition, as literals: SQLite uses a partial index only for a query that repeats it.
_QUEUED = f"status IN ('{Delivery.Status.PENDING}', '{Delivery.Status.IN_FLIGHT}')"


def _queue_span_query() -> tuple[str, list]:
    """The first and the last destination with rows queued (two ends of the by-destination index)."""
    return f"SELECT MIN(destination), MAX(destination) FROM {Delivery._meta.db_table} WHERE {_QUEUED}", []


def _others_queued(full: set[str], span: tuple[str | None, str | None] | None = None) -> bool:
    """Whether any destination outside `full` has rows queued (pending, due or not, or in flight).

    Asked before looking past full destinations: finding the oldest rows of the
    others by due time means reading past every due row of the full ones, while
    this reads the ends of the ranges between them in the by-destination index.
    `span` is `_queue_span_query`'s row when the caller has read it: when one
    destination has every queued row, the answer needs no query.
    """
    if span is not None and span[0] == span[1]:
        return span[0] is not None and span[0] not in full
    table = Delivery._meta.db_table
    bounds = sorted(full)
    ranges = [("destination < %s", [bounds[0]])]
    ranges += [("destination > %s AND destination < %s", [a, b]) for a, b in zip(bounds, bounds[1:], strict=False)]
    ranges.append(("destination > %s", [bounds[-1]]))
    sql = " UNION ALL ".join(
        f"SELECT * FROM (SELECT 1 FROM {table} WHERE {_QUEUED} AND {where} LIMIT 1) AS r{i}"
        for i, (where, _) in enumerate(ranges)
    )
    params = [p for _, values in ranges for p in values]
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT EXISTS ({sql})", params)
        return bool(cursor.fetchone()[0])


def _choose(
    now: datetime, room: dict[str, int], limit: int, due: list[tuple[int, str]] | None = None,
    span: tuple[str | None, str | None] | None = None,
) -> list[tuple[int, str]]:
    """Up to `limit` due (id, destination), round-robin across destinations, within each one's `room` (used up here).

    The oldest due rows may all belong to one destination; once it is full, look
    past it (a few rounds at most, and only if another destination has rows
    queued), so its backlog hides no one else's rows. `due` is the first round's
    rows when the caller has read them already (`_due_query` with nothing skipped),
    and `span` the queue's span of destinations (`_others_queued`).
    """
    full = {d for d, r in room.items() if r <= 0}
    if due is None:
        due = _due(now, full, limit)
    chosen: dict[int, str] = {}
    for _ in range(3):
        candidates = [c for c in due if c[0] not in chosen]
        where = dict(candidates)
        chosen.update((i, where[i]) for i in _pick(candidates, room, limit - len(chosen)))
        filled = {d for _, d in candidates if room[d] <= 0}
        if len(chosen) >= limit or len(candidates) < limit or not filled:
            break
        # Look past the full destinations (including any full from the start,
        # when the caller read the rows without leaving them out) only if
        # someone else has rows queued: reading past a long backlog is not free.
        if not _others_queued(full | filled, span):
            break
        full |= filled
        due = _due(now, full, limit)
    return list(chosen.items())


class Lease(NamedTuple):
    """What a claim leased, under one token."""

    token: str
    rows: list[Claimed]


def claim(limit: int, ended: Callable[[], Ended] = _nothing_ended) -> Lease:
    """Lease up to `limit` due deliveries that may be sent now.

    The choice is round-robin across destinations, leaving out those that are
    open, paused or at their in-flight cap, so a backlog behind a dead receiver
    never hides anyone else's due rows. It is leased in a short, serialized
    transaction that reads the gates and the in-flight counts first, so the caps
    hold exactly across every worker. On PostgreSQL an advisory lock serializes
    claims and holds back nothing else, and the choice is made under it: claimers
    in other processes never pick the same rows. On SQLite the transaction holds
    every writer back, so the candidates are chosen before it and only trimmed
    under it, and the write lock is held for three small statements.
    `ended()` names the caller's rows whose requests have ended while their
    results wait to be written (`_busy_query`): their places are free. A name
    matches only a row still in flight under the lease it ended under, so no
    place is counted free twice, whenever the result is committed. The names go
    into the count's statement, so they are asked before it: a row that ends
    meanwhile counts as on the wire, a place missed for one claim.
    """
    table = Delivery._meta.db_table
    ops = connection.ops
    token = uuid.uuid4().hex
    now = timezone.now()
    ended_now = ended()
    locked_choice = connection.vendor == "postgresql"
    if not locked_choice:
        _, room = _room_now(now, ended_now)
        chosen = _choose(now, room, limit)
        if not chosen:
            return Lease(token, [])
    with one_writer(), transaction.atomic():
        if locked_choice:
            # The lock, then what it protects, in one request: the gates, the
            # in-flight counts, the span of queued destinations and the oldest
            # due rows (each statement sees every claim committed before the
            # lock was granted).
            # The queue's statistics lag a burst (a thousand rows inserted a
            # moment ago are estimated at a handful), and the planner then
            # reads every due row into a bitmap and sorts it to return the
            # oldest few. An index scan in due order stops after the few it
            # returns, whatever the estimate: bitmap scans are off for the claim.
            # Its commit does not wait for the WAL flush: the results' durable
            # commit flushes it anyway, and a lease lost in a database crash
            # makes its row due again as soon as the database is back, while its
            # request may still be out: a duplicate, as at least once allows.
            with connection.cursor() as cursor:
                _, gate_rows, busy_rows, [span], due = together(cursor, [
                    ("SELECT pg_advisory_xact_lock(%s), set_config('enable_bitmapscan', 'off', true), "
                     "set_config('synchronous_commit', 'off', true)", [_CLAIM_LOCK_KEY]),
                    destinations.gates_query(now),
                    _busy_query(ended_now),
                    _queue_span_query(),
                    _due_query(now, set(), limit),
                ])
            gates, room = _room(gate_rows, busy_rows)
            chosen = _choose(now, room, limit, due, span)
            ids = [row_id for row_id, _ in chosen]
        else:
            gates, room = _room_now(now, ended_now)
            ids = []
            for row_id, destination in chosen:
                if room[destination] > 0:
                    room[destination] -= 1
                    ids.append(row_id)
        if not ids:
            return Lease(token, [])
        lease_until = timezone.now() + timedelta(seconds=settings.WEBHOOK_LEASE_SECONDS)
        # `(status = %s) IS TRUE`, not `status = %s`: the rows are reached by their
        # ids, and a bare status test lets the planner (misled by a burst the
        # statistics have not seen) walk the whole due index instead, filtering on id.
        sql = (
            f"UPDATE {table} SET status = %s, lease_token = %s, lease_until = %s "
            f"WHERE (status = %s) IS TRUE AND id IN ({', '.join(['%s'] * len(ids))}) RETURNING {', '.join(_CLAIMED_COLUMNS)}"
        )
        with connection.cursor() as cursor:
            cursor.execute(sql, [
                Delivery.Status.IN_FLIGHT, token, ops.adapt_datetimefield_value(lease_until), Delivery.Status.PENDING, *ids,
            ])
            returned = cursor.fetchall()
        headers = Delivery._meta.get_field("headers")
        rows = []
        for values in returned:
            row = Claimed(*values, Delivery.Status.IN_FLIGHT, token, lease_until)
            row.headers = headers.from_db_value(row.headers, None, connection) or {}
            row.body = bytes(row.body)  # PostgreSQL hands back a memoryview
            rows.append(row)
        destinations.start_probes({r.destination for r in rows} & gates.probing, now)
    return Lease(token, rows)


def renew(jobs: Iterable[_Job]) -> None:
    """Extend the leases of rows whose requests are still alive.

    By id: a claim's token also covers rows whose results are being written on
    the recorder's connection, and two transactions updating the same rows in
    different orders would deadlock.
    """
    jobs = list(jobs)
    if jobs:
        until = timezone.now() + timedelta(seconds=settings.WEBHOOK_LEASE_SECONDS)
        Delivery.objects.filter(
            id__in=[job.delivery.id for job in jobs], lease_token__in={job.token for job in jobs},
            status=Delivery.Status.IN_FLIGHT,
        ).update(lease_until=until)


def release(tokens: Iterable[str]) -> int:
    """Hand back leased rows that were not sent to completion (a stopping sender): due again, no attempt spent."""
    tokens = list(tokens)
    if not tokens:
        return 0
    return Delivery.objects.filter(lease_token__in=tokens, status=Delivery.Status.IN_FLIGHT).update(
        status=Delivery.Status.PENDING, next_attempt_at=timezone.now(), lease_token="", lease_until=None
    )


def reclaim_expired() -> int:
    """Make deliveries whose sender died (lease lapsed) due again."""
    now = timezone.now()
    lapsed = Delivery.objects.filter(status=Delivery.Status.IN_FLIGHT, lease_until__lt=now)
    # Read first: the sweeper asks every tick, and on SQLite even a no-op UPDATE takes the write lock.
    if not lapsed.exists():
        return 0
    return lapsed.update(status=Delivery.Status.PENDING, next_attempt_at=now, lease_token="", lease_until=None)


def _jobs(token: str, rows: list[Claimed]) -> list[_Job]:
    sub_ids = {r.subscription_id for r in rows if r.subscription_id}
    secrets: dict[str, list[str]] = defaultdict(list)
    subs = Subscription.objects.select_related("owner").in_bulk(sub_ids) if sub_ids else {}
    if sub_ids:
        now = timezone.now()
        for sub_id, secret in (
            SubscriptionSecret.objects.filter(subscription_id__in=sub_ids)
            .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
            .order_by("-created_at", "-id")
            .values_list("subscription_id", "secret")
        ):
            secrets[sub_id].append(secret)
    timeout = settings.WEBHOOK_TIMEOUT
    jobs = []
    for row in rows:
        skip = ""
        url, headers, keys = row.url, dict(row.headers or {}), [row.secret] if row.secret else []
        if row.subscription_id:
            sub = subs.get(row.subscription_id)
            if sub is None:
                skip = "the subscription was deleted"
            elif sub.owner is not None and sub.owner.revoked_at is not None:
                # However it came to be enabled (a process that had not heard of the revocation yet).
                skip = f"the subscription is disabled: {Subscription.OWNER_REVOKED}"
            elif not sub.enabled and row.kind != Delivery.Kind.TEST:
                skip = f"the subscription is disabled: {sub.disabled_reason}"
            else:
                url, headers, keys = sub.url, dict(sub.headers or {}), secrets[sub.id]
        request = outbound.Request(url, row.body, row.webhook_id, keys, headers, timeout)
        jobs.append(_Job(row, token, request, skip))
    return jobs


# --- sending ---------------------------------------------------------------------

def _start(jobs: list[_Job], done: "SimpleQueue[_Result]") -> outbound.Started:
    """Send the jobs' attempts on the asyncio client; each one's `_Result` lands in `done`."""
    started = timezone.now()
    sending = []
    for job in jobs:
        if job.skip_reason:
            done.put(_Result(job, started, outbound.Outcome(error=job.skip_reason)))
        else:
            sending.append(job)
    return outbound.client().start(
        [job.request for job in sending],
        lambda index, outcome: done.put(_Result(sending[index], started, outcome)),
    )


# --- recording -------------------------------------------------------------------

def _verdict(row: Claimed, result: _Result) -> tuple[str, float | None]:
    """(attempt outcome, retry delay): 410 is final, everything else retries within the schedule.

    Webhook receivers misdeploy, so a refusing 4xx is retried like a 5xx (the
    collector forwarder, whose receiver is an operator's own, does not).
    """
    verdict = outbound.classify(result.outcome)
    if verdict == outbound.Verdict.DELIVERED:
        return Attempt.Outcome.DELIVERED, None
    if result.job.skip_reason or verdict == outbound.Verdict.GONE:
        return Attempt.Outcome.DEAD, None
    if not row.retries:
        return Attempt.Outcome.FAILED, None
    delay = delay_for(row.attempts + 1 - row.budget_base, settings.WEBHOOK_RETRY_SCHEDULE)
    if delay is None:
        return Attempt.Outcome.DEAD, None
    return Attempt.Outcome.RETRY, honour_retry_after(result.outcome.retry_after, delay)


def _event(row: Claimed, event_type: str, status: str, outcome: outbound.Outcome, error: str, url: str):
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


def record(results: list[_Result]) -> None:
    """Write attempts in bulk and outcomes with targeted updates, in one transaction.

    Every update is conditional on the row still being leased to the token of the
    claim that leased it to this sender (`_Job.token`). A sender
    whose lease lapsed (it stalled and the row was sent again) logs its attempt
    but decides nothing and announces nothing.
    """
    now = timezone.now()
    attempts: list[tuple] = []  # in _ATTEMPT_COLUMNS order
    delivered: list[_Result] = []
    singles: list[tuple[_Result, str, dict]] = []
    for result in results:
        row, outcome = result.job.delivery, result.outcome
        verdict, delay = _verdict(row, result)
        error = outcome.describe()
        attempts.append((
            row.id, row.attempts + 1, result.started_at, outcome.duration_ms, outcome.status,
            outcome.headers, outcome.body, error, verdict,
        ))
        if verdict == Attempt.Outcome.DELIVERED:
            delivered.append(result)
            continue
        fields = {"last_status": outcome.status, "last_error": error[:4000]}
        if verdict == Attempt.Outcome.RETRY:
            fields.update(status=Delivery.Status.PENDING, next_attempt_at=now + timedelta(seconds=delay))
        elif verdict == Attempt.Outcome.FAILED:
            fields.update(status=Delivery.Status.FAILED)
        else:
            fields.update(status=Delivery.Status.DEAD, dead_lettered_at=now)
        singles.append((result, verdict, fields))

    breakers: dict[str, list[outbound.Outcome]] = defaultdict(list)
    for result in results:
        if not result.job.skip_reason:
            breakers[result.job.delivery.destination].append(result.outcome)
    events = []
    sub_ok: set[str] = set()
    sub_failing: set[str] = set()
    sub_gone: set[str] = set()
    with one_writer(), transaction.atomic():
        _insert_attempts(attempts)
        live = _mark_delivered([(r.job.delivery.id, r.job.token, r.outcome.status) for r in delivered], now)
        for result in delivered:
            row = result.job.delivery
            if row.id in live:
                events.append(_event(row, "webhook.delivered", "delivered", result.outcome, "", result.job.request.url))
                if row.subscription_id:
                    sub_ok.add(row.subscription_id)
        leased = Delivery.objects.filter(status=Delivery.Status.IN_FLIGHT)
        lease_free = {"lease_token": "", "lease_until": None, "attempts": F("attempts") + 1}
        for result, verdict, fields in singles:
            row = result.job.delivery
            if not leased.filter(id=row.id, lease_token=result.job.token).update(**fields, **lease_free):
                continue
            if row.subscription_id and not result.job.skip_reason:
                (sub_gone if result.outcome.status == 410 else sub_failing).add(row.subscription_id)
            error = fields["last_error"]
            if verdict == Attempt.Outcome.RETRY:
                if row.attempts == row.budget_base:  # first failure of this budget: once, not per retry
                    events.append(_event(row, "webhook.failed", "retrying", result.outcome, error, result.job.request.url))
            elif verdict == Attempt.Outcome.FAILED:
                events.append(_event(row, "webhook.failed", "failed", result.outcome, error, result.job.request.url))
            else:
                events.append(_event(row, "webhook.dead_lettered", "dead", result.outcome, error, result.job.request.url))
        if sub_ok:
            Subscription.objects.filter(id__in=sub_ok, failing_since__isnull=False).update(failing_since=None)
        if sub_failing or sub_gone:
            _note_failures(sub_failing | sub_gone, sub_gone, now)
        events += destinations.record(breakers, now)
        publish_many(events)


_ATTEMPT_COLUMNS = (
    "delivery_id", "number", "started_at", "duration_ms", "status_code",
    "response_headers", "response_body", "error", "outcome",
)


def _insert_attempts(attempts: list[tuple]) -> None:
    """Insert attempt rows, given as tuples in `_ATTEMPT_COLUMNS` order.

    On PostgreSQL with COPY: several times cheaper than a bulk INSERT.
    """
    if connection.vendor != "postgresql":
        Attempt.objects.bulk_create(Attempt(**dict(zip(_ATTEMPT_COLUMNS, a, strict=True))) for a in attempts)
        return
    from psycopg.types.json import Jsonb

    columns = ", ".join(_ATTEMPT_COLUMNS)
    headers = _ATTEMPT_COLUMNS.index("response_headers")
    with connection.cursor() as cursor, cursor.cursor.copy(
        f"COPY {Attempt._meta.db_table} ({columns}) FROM STDIN"
    ) as copy:
        for a in attempts:
            copy.write_row((*a[:headers], Jsonb(a[headers]), *a[headers + 1 :]))


def _mark_delivered(rows: list[tuple[int, str, int | None]], now: datetime) -> set[int]:
    """One UPDATE for delivered rows, each (id, lease token, HTTP status), where still leased to that token.

    Returns the ids it changed. The rows of several claims (tokens) go in one
    statement, joined to their list: on PostgreSQL three arrays (a statement of
    the same text whatever the number of rows, which the driver parses once),
    elsewhere a VALUES list (whose columns are `column1`... on both databases).
    """
    if not rows:
        return set()
    table = Delivery._meta.db_table
    if connection.vendor == "postgresql":
        joined = "unnest(%s::bigint[], %s::text[], %s::integer[]) AS v(column1, column2, column3)"
        values = [list(column) for column in zip(*rows, strict=True)]
    else:
        joined = f"(VALUES {', '.join(['(%s, %s, %s)'] * len(rows))}) AS v"
        values = [value for row in rows for value in row]
    sql = (
        f"UPDATE {table} SET status = %s, delivered_at = %s, last_status = v.column3, last_error = '', "
        f"lease_token = '', lease_until = NULL, attempts = attempts + 1 FROM {joined} "
        f"WHERE {table}.id = v.column1 AND {table}.lease_token = v.column2 AND {table}.status = %s "
        f"RETURNING {table}.id"
    )
    params = [Delivery.Status.DELIVERED, connection.ops.adapt_datetimefield_value(now), *values, Delivery.Status.IN_FLIGHT]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return {row_id for (row_id,) in cursor.fetchall()}


def _note_failures(failing: set[str], gone: set[str], now: datetime) -> None:
    """Start failure clocks; disable on 410 and after WEBHOOK_DISABLE_AFTER_DAYS of failure."""
    from .subscriptions import invalidate_cache  # subscriptions sends through this module

    Subscription.objects.filter(id__in=failing, failing_since__isnull=True).update(failing_since=now)
    disabled = 0
    if gone:
        disabled += Subscription.objects.filter(id__in=gone, enabled=True).update(
            enabled=False, disabled_reason="The receiver answered 410 Gone."
        )
    cutoff = now - timedelta(days=settings.WEBHOOK_DISABLE_AFTER_DAYS)
    disabled += Subscription.objects.filter(id__in=failing, enabled=True, failing_since__lt=cutoff).update(
        enabled=False,
        disabled_reason=f"Every delivery failed for {settings.WEBHOOK_DISABLE_AFTER_DAYS:g} days.",
    )
    if disabled:
        # As a save does (post_save): the events published next, these results' own
        # among them, must not make deliveries to it that would die unsent.
        invalidate_cache()


def _record_surviving(results: list[_Result]) -> int:
    """`record`, tolerating deliveries deleted while in flight (their subscription was deleted)."""
    try:
        record(results)
    except IntegrityError:
        existing = set(
            Delivery.objects.filter(id__in=[r.job.delivery.id for r in results]).values_list("id", flat=True)
        )
        results = [r for r in results if r.job.delivery.id in existing]
        record(results)
    return len(results)


class _Recorder:
    """Writes finished attempts while the sender goes on claiming and sending.

    On a thread and a database connection of its own, so that a claim never
    waits for results to be written, nor results for a claim. Each write takes
    everything that finished while the one before it ran, so groups grow with
    the load and a lone result is written at once. A caller already inside a
    transaction (a test, a shell) holds rows that no other connection can see:
    its results are written on its own thread, as it hands them over.

    `ended()` names the rows whose requests ended and whose results are not
    committed yet (`claim`'s `ended`).
    """

    def __init__(self, threaded: bool):
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._waiting: list[_Result] = []  # handed over, not being written yet
        self._writing: list[_Result] = []
        self._closing = False
        self.error: BaseException | None = None
        self.recorded = 0
        self._thread = None
        if threaded:
            self._thread = threading.Thread(target=self._run, name="webhook-recorder", daemon=True)
            self._thread.start()

    def ended(self) -> list[tuple[int, str]]:
        with self._lock:
            return [(r.job.delivery.id, r.job.token) for r in (*self._waiting, *self._writing)]

    def add(self, results: list[_Result]) -> None:
        if not results:
            return
        with self._lock:
            self._waiting += results
            self._changed.notify_all()
        if self._thread is None:
            self._write()

    def backlog(self) -> int:
        """Results handed over and not written yet."""
        with self._lock:
            return len(self._waiting) + len(self._writing)

    def wait(self, timeout: float) -> None:
        """Until what was handed over is written (or failed), at most `timeout` seconds."""
        with self._lock:
            self._changed.wait_for(lambda: not (self._waiting or self._writing) or self.error, timeout)

    def close(self) -> set[str]:
        """Write what was handed over and stop; the lease tokens of results left unwritten (by a failure)."""
        if self._thread is not None:
            with self._lock:
                self._closing = True
                self._changed.notify_all()
            self._thread.join()
        with self._lock:
            return {r.job.token for r in self._waiting + self._writing}

    def _write(self) -> None:
        with self._lock:
            batch, self._waiting, self._writing = self._waiting, [], self._waiting
        self.recorded += _record_surviving(batch)
        with self._lock:
            self._writing = []
            self._changed.notify_all()

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    self._changed.wait_for(lambda: self._waiting or self._closing)
                    if not self._waiting:
                        return
                self._write()
        except BaseException as exc:  # the sender raises it, and hands the rows back
            log.exception("writing webhook results failed")
            with self._lock:
                self.error = exc
                self._changed.notify_all()
        finally:
            connection.close()


# --- the loop --------------------------------------------------------------------

def send_due(run_seconds: float = RUN_SECONDS) -> int:
    """Claim, send and record due deliveries until none are due; returns attempts recorded.

    Keeps up to WEBHOOK_CONCURRENCY requests in flight on the asyncio client,
    claiming only what can start at once (so no lease waits on a busy sender) and
    looking for newly due rows while requests are out; results are written
    meanwhile (`_Recorder`). Leases of requests still alive are renewed; a sender
    that stops early (a stop requested, or a failure) hands its unsent rows back.
    """
    kicks.clear(KICK)
    capacity = max(1, settings.WEBHOOK_CONCURRENCY)
    batch = max(1, min(settings.WEBHOOK_BATCH_SIZE, capacity))
    # Claim again once this many places came free (or CLAIM_EVERY passed): often
    # enough to keep a destination's pipe full, rarely enough to be cheap.
    refill = max(1, min(batch, settings.WEBHOOK_MAX_IN_FLIGHT_PER_DESTINATION) // 2)
    renew_every = settings.WEBHOOK_LEASE_SECONDS / 3
    deadline = time.monotonic() + run_seconds
    done: SimpleQueue[_Result] = SimpleQueue()
    inflight: dict[int, _Job] = {}
    recorder = _Recorder(threaded=not connection.in_atomic_block)
    freed = 0
    last_renew = time.monotonic()
    last_claim = 0.0
    holder = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    listening = False  # holds LISTENING
    last_listen = -LISTEN_RENEW
    helped = False
    drained = False  # the last claim found nothing to send
    stop_by = None  # once a stop is requested: when to hand back what is still in flight
    groups: list[outbound.Started] = []  # the attempts started, to cut off at a stop
    try:
        while True:
            if recorder.error is not None:
                raise recorder.error
            clock = time.monotonic()
            if stop_by is None and stopping.requested():
                deadline, stop_by = min(deadline, clock), clock + STOP_GRACE
            free = capacity - len(inflight)
            # Results not written hold their rows' leases (not renewed off the
            # wire): claim no more while the writes lag by more than a full pipe.
            if clock < deadline and free > 0 and recorder.backlog() <= capacity and (
                not inflight or freed >= refill
                or clock - last_claim >= (IDLE_CLAIM_EVERY if drained else CLAIM_EVERY)
            ):
                want = min(free, batch)
                token, rows = claim(want, recorder.ended)
                last_claim, freed, drained = clock, 0, not rows
                jobs = _jobs(token, rows)
                for job in jobs:
                    inflight[job.delivery.id] = job
                groups.append(_start(jobs, done))
                if len(rows) == want and not helped:
                    # A backlog: wake one more worker process to share it (it claims
                    # other rows); each helper may call one more while the backlog lasts.
                    helped = True
                    kick()
            elif clock >= deadline:
                drained = True
            if inflight:
                results: list[_Result] = []
                try:
                    results.append(done.get(timeout=CLAIM_EVERY))
                    while True:
                        results.append(done.get_nowait())
                except Empty:
                    pass
                for result in results:
                    del inflight[result.job.delivery.id]
                freed += len(results)
                recorder.add(results)
            elif recorder.backlog():
                # Nothing in flight, results still being written: claim again once
                # they are (a retry may be due at once, places come free, the
                # writes no longer lag).
                recorder.wait(CLAIM_EVERY)
            elif drained:
                break
            clock = time.monotonic()
            if inflight and clock - last_renew >= renew_every:
                renew(inflight.values())
                last_renew = clock
            has_room = clock < deadline and len(inflight) < capacity
            if (listening and not has_room) or (has_room and clock - last_listen >= LISTEN_RENEW):
                listening = has_room and leases.acquire(LISTENING, holder, LISTEN_SECONDS)
                if not has_room:
                    leases.release(LISTENING, holder)
                last_listen = clock
            if stop_by is not None and clock >= stop_by:
                for group in groups:
                    group.cancel()  # cut off, so no receiver gets one after its row is handed back
                break
    finally:
        # The rows first: a lease left behind lapses in LISTEN_SECONDS, rows only in WEBHOOK_LEASE_SECONDS.
        unsent = {job.token for job in inflight.values()}
        try:
            unsent |= recorder.close()
            if unsent:
                release(unsent)
        finally:
            if listening:
                leases.release(LISTENING, holder)
    if stop_by is None and time.monotonic() > deadline and sendable_now():
        kick()  # more work than one run: hand over to a fresh task
    return recorder.recorded


_last_tick_kick = 0.0


def tick() -> None:
    """Sweeper tick: reclaim lapsed leases, expire long-deferred deliveries, wake a sender when rows are due.

    Not while a sender with room is running (`LISTENING`): it claims due rows itself.
    """
    global _last_tick_kick
    reclaim_expired()
    destinations.expire_deferred()
    now = time.monotonic()
    # At most one kick per half second: a kicked task drains everything that is due.
    if now - _last_tick_kick < 0.5 or leases.is_held(LISTENING):
        return
    if sendable_now():
        _last_tick_kick = now
        kick()


# --- redrive ---------------------------------------------------------------------

# Dead letters redriven per transaction: after an outage the queue may hold more rows
# than one statement may name (PostgreSQL takes 65535 parameters, SQLite 999 before
# 3.32), and one transaction for them all would hold the write lock the whole time.
REDRIVE_CHUNK = 500


# A disabled subscription's deliveries would only die again, unsent (a test send goes all the same).
_SUBSCRIPTION_DISABLED = Q(subscription__enabled=False) & ~Q(kind=Delivery.Kind.TEST)


def held_by_disabled_subscription(deliveries: QuerySet) -> int:
    """How many of `deliveries` a redrive leaves where they are until their subscription is enabled."""
    return deliveries.filter(_SUBSCRIPTION_DISABLED).count()


def redrive(deliveries: QuerySet, statuses: Iterable[str] = (Delivery.Status.DEAD,)) -> int:
    """Give deliveries in `statuses` a fresh retry budget under the same webhook-id; returns how many.

    Not those of a disabled subscription: they would die again at once, unsent.
    """
    statuses = list(statuses)
    queued = after = 0
    while True:
        with transaction.atomic():
            rows = list(
                deliveries.filter(status__in=statuses, id__gt=after).exclude(_SUBSCRIPTION_DISABLED).order_by("id")
                .values("id", "webhook_id", "execution_id", "event_type", "subscription_id", "attempts", "url")[:REDRIVE_CHUNK]
            )
            if not rows:
                return queued
            after = rows[-1]["id"]
            # Locked and read again: a redrive of the same rows running beside this one
            # (another operator, the API and the admin) makes this one wait, then find
            # them redriven; only the rows this one moves are announced.
            mine = set(
                Delivery.objects.select_for_update()
                .filter(id__in=[r["id"] for r in rows], status__in=statuses)
                .order_by("id")  # in one order, so two redrives of crossing sets cannot deadlock
                .values_list("id", flat=True)
            )
            now = timezone.now()
            queued += Delivery.objects.filter(id__in=mine, status__in=statuses).update(
                status=Delivery.Status.PENDING,
                next_attempt_at=now,
                budget_base=F("attempts"),
                budget_started_at=now,
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
                if r["id"] in mine
            )
            transaction.on_commit(kick)
