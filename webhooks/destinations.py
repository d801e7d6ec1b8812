"""Per-destination circuit breakers: a dead receiver must not cost anyone else anything.

A destination is the `scheme://host:port` a delivery goes to. Its `Destination`
row is the breaker, shared by every worker process through the database:

- `closed`: deliveries flow, at most WEBHOOK_MAX_IN_FLIGHT_PER_DESTINATION at once;
- `open`: after WEBHOOK_BREAKER_FAILURES consecutive failed attempts (timeout,
  connection error, 5xx) its deliveries are not claimed, so they spend no attempt,
  until `next_probe_at` (WEBHOOK_BREAKER_COOLDOWN, 30 s, doubling on each failed
  probe up to WEBHOOK_BREAKER_MAX_COOLDOWN, 10 min);
- `half_open`: one delivery goes through as the probe; any HTTP answer below 500
  closes the breaker, a failure reopens it.

A 429 with `Retry-After` pauses the destination until then. A delivery kept
waiting by an open breaker still reaches the dead letter queue once its retry
schedule's whole span has passed since its budget began and the destination has
failed again after that (`expire_deferred`): a receiver back before its next
probe gets what waited for it, never the dead letter queue.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, F, OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from agentfield_site.lib import outbound
from agentfield_site.lib.backoff import retry_after_seconds
from agentfield_site.lib.timefmt import iso
from observability.events import build, publish_many

from .models import Attempt, Delivery, Destination

# A 429's Retry-After pauses a destination for at most this long.
MAX_PAUSE = 600.0


@dataclass(frozen=True)
class Gates:
    """What a claim must respect right now."""

    blocked: frozenset[str]  # take nothing from these
    probing: frozenset[str]  # take at most one delivery from these: the probe


def gates_query(now: datetime) -> tuple[str, list]:
    """Destinations that are open, paused or already probing, and those due a probe (read with `gates_from`).

    Open: closed to claims until its probe is due. Half-open: while the probe's
    lease lasts (after that the probe's sender is taken for dead and another
    probe may go). Paused: until its 429's Retry-After. Every claim asks, in
    the request that takes the claim lock, so this is one plain statement.
    """
    sql = (
        "SELECT destination, CASE WHEN paused_until > %s"
        " OR (state = %s AND next_probe_at > %s) OR (state = %s AND probe_until > %s)"
        f" THEN 1 ELSE 0 END FROM {Destination._meta.db_table}"
        " WHERE state IN (%s, %s) OR paused_until > %s"
    )
    at = connection.ops.adapt_datetimefield_value(now)
    opened, probing_state = Destination.State.OPEN, Destination.State.HALF_OPEN
    return sql, [at, opened, at, probing_state, at, opened, probing_state, at]


def gates_from(rows: list[tuple]) -> Gates:
    """`Gates` from the rows of `gates_query`."""
    blocked = frozenset(d for d, is_blocked in rows if is_blocked)
    # Not blocked but listed: an open breaker whose probe is due, or a probe whose sender died.
    probing = frozenset(d for d, is_blocked in rows if not is_blocked)
    return Gates(blocked, probing)


def start_probes(destinations: set[str], now: datetime) -> None:
    """Mark the destinations whose probe a claim just took as half-open for the probe's lease."""
    if destinations:
        until = now + timedelta(seconds=settings.WEBHOOK_LEASE_SECONDS)
        Destination.objects.filter(destination__in=destinations).exclude(state=Destination.State.CLOSED).update(
            state=Destination.State.HALF_OPEN, probe_until=until
        )


def record(outcomes: dict[str, list[outbound.Outcome]], now: datetime) -> list:
    """Update the breakers with attempts' outcomes (in the order they finished); returns events.

    Call inside the transaction that records the attempts. Every transition is a
    conditional update, so two workers recording at once announce it once.
    """
    events = []
    recovered, failing, paused = set(), {}, {}
    for destination, results in outcomes.items():
        tail = 0  # failures after the last answer that shows the receiver is up
        answered = False
        for outcome in results:
            if outbound.destination_failed(outcome):
                tail += 1
            elif outcome.status is not None:
                answered, tail = True, 0
            if outcome.status == 429 and (wanted := retry_after_seconds(outcome.retry_after)) is not None:
                paused[destination] = (min(wanted, MAX_PAUSE), outcome.describe())
        if answered and not tail:
            recovered.add(destination)
        elif tail:
            failing[destination] = (answered, tail, results[-1].describe())
    if recovered:
        events += _close(recovered, now)
    if failing:
        events += _fail(failing, now)
    for destination, (seconds, error) in paused.items():
        _ensure([destination])
        until = now + timedelta(seconds=seconds)
        Destination.objects.filter(destination=destination).update(
            paused_until=until, last_error=f"{error[:1900]}: paused until {until.isoformat(timespec='seconds')} (Retry-After)"
        )
    return events


# Destinations this process has made rows for, once committed: saves an INSERT per flush.
_known: set[str] = set()


def _ensure(destinations) -> None:
    new = set(destinations) - _known
    if new:
        Destination.objects.bulk_create([Destination(destination=d) for d in new], ignore_conflicts=True)
        # Not before the commit: a write rolled back (and retried) takes its rows with it.
        transaction.on_commit(partial(_known.update, new))


def _close(destinations: set[str], now: datetime) -> list:
    """Reset failure counts and close breakers after an answer; the healthy path is one SELECT."""
    _ensure(destinations)  # every address ever sent to is listed, healthy or not
    # Every flush asks: a plain statement, and the ORM only for the rare troubled ones.
    marks = ", ".join(["%s"] * len(destinations))
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT destination FROM {Destination._meta.db_table} WHERE destination IN ({marks})"
            " AND (consecutive_failures > 0 OR state <> %s)",
            [*destinations, Destination.State.CLOSED],
        )
        names = [name for (name,) in cursor.fetchall()]
    if not names:
        return []
    troubled = Destination.objects.filter(destination__in=names).values_list("destination", "state", "opened_at")
    events = []
    for destination, state, opened_at in troubled:
        if state == Destination.State.CLOSED:
            Destination.objects.filter(destination=destination, state=Destination.State.CLOSED).update(
                consecutive_failures=0
            )
            continue
        closed = Destination.objects.filter(destination=destination).exclude(state=Destination.State.CLOSED).update(
            state=Destination.State.CLOSED, consecutive_failures=0, opened_at=None, failed_at=None, cooldown_seconds=0,
            next_probe_at=None, probe_until=None, last_error="",
        )
        if closed:
            down = (now - opened_at).total_seconds() if opened_at else None
            events.append(_event("webhook.destination_closed", destination, "closed", {"down_seconds": down}))
    return events


def _fail(failing: dict[str, tuple[bool, int, str]], now: datetime) -> list:
    _ensure(failing)
    events = []
    threshold = max(1, settings.WEBHOOK_BREAKER_FAILURES)
    for destination, (answered, tail, error) in failing.items():
        base = 0 if answered else F("consecutive_failures")
        Destination.objects.filter(destination=destination).update(
            consecutive_failures=base + tail, last_error=error[:2000]
        )
        row = Destination.objects.get(destination=destination)
        if row.state == Destination.State.CLOSED and row.consecutive_failures >= threshold:
            cooldown = settings.WEBHOOK_BREAKER_COOLDOWN
            opened = Destination.objects.filter(destination=destination, state=Destination.State.CLOSED).update(
                state=Destination.State.OPEN, opened_at=now, failed_at=now, cooldown_seconds=cooldown,
                next_probe_at=now + timedelta(seconds=cooldown), probe_until=None,
            )
        elif row.state == Destination.State.HALF_OPEN and not answered:
            first, most = settings.WEBHOOK_BREAKER_COOLDOWN, settings.WEBHOOK_BREAKER_MAX_COOLDOWN
            cooldown = min(max(row.cooldown_seconds, first) * 2, most)
            opened = Destination.objects.filter(destination=destination, state=Destination.State.HALF_OPEN).update(
                state=Destination.State.OPEN, failed_at=now, cooldown_seconds=cooldown,
                next_probe_at=now + timedelta(seconds=cooldown), probe_until=None,
            )
        else:
            continue
        if opened:
            events.append(_event(
                "webhook.destination_opened", destination, "open",
                {"consecutive_failures": row.consecutive_failures, "retry_in_seconds": cooldown, "error": error[:500]},
            ))
    return events


def _event(event_type: str, destination: str, state: str, extra: dict):
    return build(event_type, status=state, data={"destination": destination, "state": state, **extra})


def schedule_span() -> float:
    """Seconds a delivery's retry schedule spans: how long a deferred delivery may wait."""
    return float(sum(settings.WEBHOOK_RETRY_SCHEDULE))


def expire_deferred(now: datetime | None = None) -> int:
    """Dead-letter due deliveries kept waiting by an open breaker past their schedule's span.

    Only those whose span ended before the destination's latest failure: one that
    ended while the breaker waited for its next probe waits for that probe, which
    may find the receiver back (then it is sent), or fail (then it goes).
    """
    now = now or timezone.now()
    down = Destination.objects.exclude(state=Destination.State.CLOSED).values_list(
        "destination", "opened_at", "failed_at"
    )
    expired = 0
    for destination, opened_at, failed_at in down:
        tried = min(now, failed_at or opened_at or now)
        cutoff = tried - timedelta(seconds=schedule_span())
        error = (f"destination {destination} unavailable since {iso(opened_at) or 'unknown'}, "
                 f"last failed {iso(tried)}; retry schedule span exceeded")
        with transaction.atomic():
            rows = list(
                # Only rows that are due: one whose last retry (jitter, Retry-After) falls
                # after the span still gets that attempt if the destination recovers.
                Delivery.objects.filter(
                    destination=destination, status=Delivery.Status.PENDING, retries=True,
                    budget_started_at__lt=cutoff, next_attempt_at__lte=now,
                ).values("id", "webhook_id", "execution_id", "event_type", "subscription_id", "attempts", "url")[:1000]
            )
            if not rows:
                continue
            expired += Delivery.objects.filter(id__in=[r["id"] for r in rows], status=Delivery.Status.PENDING).update(
                status=Delivery.Status.DEAD, dead_lettered_at=now, last_error=error
            )
            publish_many(
                build(
                    "webhook.dead_lettered",
                    execution_id=r["execution_id"],
                    status="dead",
                    data={
                        "delivery_id": r["id"], "webhook_id": r["webhook_id"], "event": r["event_type"],
                        "url": r["url"], "subscription_id": r["subscription_id"], "attempts": r["attempts"],
                        "http_status": None, "error": error,
                    },
                )
                for r in rows
            )
    return expired


# --- Operator actions and the overview -------------------------------------------------


def probe_now(destinations) -> int:
    """Let the next claim send a probe to these open destinations at once."""
    return Destination.objects.filter(destination__in=list(destinations)).exclude(
        state=Destination.State.CLOSED
    ).update(state=Destination.State.OPEN, next_probe_at=timezone.now(), probe_until=None, paused_until=None)


def close(destinations) -> int:
    """Close these breakers by hand: their deliveries flow again at once."""
    now = timezone.now()
    destinations = list(destinations)
    with transaction.atomic():
        events = _close(set(destinations), now)
        Destination.objects.filter(destination__in=destinations).update(paused_until=None)
        publish_many(events)
    # Their due deliveries go out on the sweeper's next tick.
    return len(events)


def _count(rows: QuerySet, field: str) -> Coalesce:
    """A correlated COUNT of `rows` whose `field` is the outer destination."""
    grouped = rows.filter(**{field: OuterRef("destination")}).order_by().values(field)
    return Coalesce(Subquery(grouped.annotate(n=Count("pk")).values("n")[:1]), 0)


def with_stats(rows: QuerySet) -> QuerySet:
    """Destinations annotated with `pending`, `in_flight`, `attempts_1h` and `delivered_1h`."""
    recent = Attempt.objects.filter(started_at__gte=timezone.now() - timedelta(hours=1))
    return rows.annotate(
        pending=_count(Delivery.objects.filter(status=Delivery.Status.PENDING), "destination"),
        in_flight=_count(Delivery.objects.filter(status=Delivery.Status.IN_FLIGHT), "destination"),
        attempts_1h=_count(recent, "delivery__destination"),
        delivered_1h=_count(recent.filter(outcome=Attempt.Outcome.DELIVERED), "delivery__destination"),
    )


def overview() -> list[dict]:
    """Every known destination, and every address with deliveries waiting, with breaker and queue."""
    now = timezone.now()
    _ensure(
        Delivery.objects.filter(status__in=[Delivery.Status.PENDING, Delivery.Status.IN_FLIGHT])
        .exclude(destination="")
        .values_list("destination", flat=True)
        .distinct()
    )
    result = []
    for row in with_stats(Destination.objects.all()):
        result.append({
            "destination": row.destination,
            "state": row.state,
            "consecutive_failures": row.consecutive_failures,
            "opened_at": row.opened_at,
            "next_probe_at": row.next_probe_at if row.state != Destination.State.CLOSED else None,
            "paused_until": row.paused_until if row.paused_until and row.paused_until > now else None,
            "last_error": row.last_error,
            "pending": row.pending,
            "in_flight": row.in_flight,
            "success_rate_1h": round(row.delivered_1h / row.attempts_1h, 4) if row.attempts_1h else None,
        })
    return result
