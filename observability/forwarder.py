"""The collector forwarder: every platform event, in id order, in signed batches.

The event log is the queue. `ForwarderState.cursor` is the id of the last event
that is done with (acknowledged by the collector, dead-lettered, or filtered out);
it moves only after the collector answered 2xx or the batch went to the dead
letter queue, in the same transaction as those dead letters. A worker killed
mid-send therefore re-sends the batches in flight, and those acknowledged in the
last SAVE_SECONDS, on the next run: delivery is at least once. `batch_id` is
derived from the events a batch carries, so a batch re-sent with the same events
keeps its `webhook-id` and collectors can de-duplicate on it.

One forwarder runs at a time (the "forwarder" lease), so batches are started in
id order. Up to OBSERVABILITY_CONCURRENCY consecutive batches are in flight at
once on keep-alive connections; the cursor only ever covers the contiguous prefix
of finished batches, so a collector may see two neighbouring batches arrive out
of order (each event carries its `event_id`), never a gap.

Runs are started by `kick()`: after each committed event transaction (low
latency) and from a sweeper tick (catch-up after downtime or a lost wake-up).
"""

import hashlib
import json
import logging
import os
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Max
from django.utils import timezone

from agentfield_site.jobs import leases
from agentfield_site.lib import backoff, outbound, strict_json, tasks
from agentfield_site.lib.timefmt import iso

from .models import ForwarderConfig, ForwarderDeadLetter, ForwarderState, PlatformEvent
from .type_patterns import type_regex

log = logging.getLogger(__name__)

LEASE = "forwarder"
KICK_LEASE = "forwarder-kick"
TASK = "observability.forwarder.run"
# Events read per query: large, so the database is not the bottleneck at 5,000/s.
READ_CHUNK = 2000
# How often an idle run looks at the log, and how long it stays after draining:
# events that follow within that time go out without a new task.
POLL_SECONDS = 0.05
LINGER_SECONDS = 3.0
# While batches flow, the cursor is written at most this often (a crash re-sends
# at most this much); dead letters and idle moments are written at once.
SAVE_SECONDS = 0.25
# At most one task enqueued per this many seconds by `kick()`.
KICK_SECONDS = 1.0
# `on_commit` checks the configuration, and trusts a running forwarder, this long per process.
CONFIG_CACHE_SECONDS = 1.0
RUNNING_CACHE_SECONDS = 0.5

_TYPE_PATTERN = re.compile(r"^[A-Za-z0-9_.*\-]{1,64}$")
ALL_TYPES = ["*"]


class ConfigError(ValueError):
    """A configuration the forwarder refuses; the message says why, for a 400."""


class NotConfigured(RuntimeError):
    """Redrive without a collector to send to."""


# --- Configuration -------------------------------------------------------------


def validate_headers(value: object) -> dict[str, str]:
    """Custom headers, by the rules every outbound request follows (`outbound.clean_headers`)."""
    try:
        return outbound.clean_headers(value)
    except outbound.InvalidTarget as exc:
        raise ConfigError(f"{exc}.") from exc


def validate_event_types(value: object) -> list[str]:
    """Type patterns (`execution.*`, `node.online`, `*`); omitted means every event."""
    if value is None:
        return list(ALL_TYPES)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(
            'event_types must be a list of event type patterns, e.g. ["execution.*"].'
        )
    if not value:
        raise ConfigError(
            "event_types must list at least one pattern; omit it to forward every event."
        )
    for pattern in value:
        if not _TYPE_PATTERN.match(pattern):
            raise ConfigError(
                f"event type pattern {pattern!r} may use only letters, digits, '.', '_', '-' and '*'."
            )
    return list(dict.fromkeys(value))


def validate_url(value: object) -> str:
    try:
        return outbound.clean_url(value)
    except outbound.InvalidTarget as exc:
        raise ConfigError(f"url is not allowed: {exc}.") from exc


def validate_secret(value: object) -> str | None:
    """None keeps the stored secret; '' removes it."""
    if value is None:
        return None
    try:
        return outbound.clean_secret(value)
    except outbound.InvalidTarget as exc:
        raise ConfigError(f"{exc}.") from exc


def configure(
    *,
    url: str,
    secret: str | None,
    headers: dict[str, str],
    enabled: bool,
    event_types: list[str],
) -> ForwarderConfig:
    """Create or replace the collector configuration; `secret=None` keeps the old secret.

    A new configuration forwards events from now on: the cursor starts at the
    newest event, so a collector is not flooded with the whole retained log.
    """
    with transaction.atomic():
        config = (
            ForwarderConfig.objects.select_for_update()
            .filter(pk=ForwarderConfig.SINGLETON_ID)
            .first()
        )
        created = config is None
        if created:
            config = ForwarderConfig(pk=ForwarderConfig.SINGLETON_ID)
        config.url = url
        if secret is not None:
            config.secret = secret
        config.headers = headers
        config.enabled = enabled
        config.event_types = event_types
        config.save()
        if created:
            newest = PlatformEvent.objects.aggregate(m=Max("id"))["m"] or 0
            ForwarderState.objects.update_or_create(
                pk=ForwarderState.SINGLETON_ID,
                defaults={"cursor": newest, "last_error": "", "last_error_at": None},
            )
    _forget_cached_config()
    return config


def unconfigure() -> bool:
    """Remove the configuration; forwarding stops. True when there was one."""
    deleted = ForwarderConfig.objects.filter(pk=ForwarderConfig.SINGLETON_ID).delete()[0]
    _forget_cached_config()
    return bool(deleted)


def config_document(config: ForwarderConfig) -> dict:
    """The contract's `config` object: never the secret, only whether there is one."""
    return {
        "url": config.url,
        "has_secret": bool(config.secret),
        "headers": config.headers,
        "enabled": config.enabled,
        "event_types": config.event_types,
        "created_at": iso(config.created_at),
        "updated_at": iso(config.updated_at),
    }


def _types_regex(patterns: Sequence[str]) -> str | None:
    """The regex of the forwarded types, None when every type is forwarded (no regex to run)."""
    return None if not patterns or "*" in patterns else type_regex(patterns)


def status() -> dict:
    """The contract's `/status` document."""
    config = ForwarderConfig.current()
    state = ForwarderState.get()
    events = PlatformEvent.objects.filter(id__gt=state.cursor)
    regex = _types_regex(config.event_types) if config else None
    if regex:
        events = events.filter(type__regex=regex)
    return {
        "enabled": bool(config and config.enabled),
        "webhook_url": config.url if config else None,
        "backlog": events.count() if config else 0,
        "cursor": state.cursor,
        "events_forwarded": state.events_forwarded,
        "dead_letter_count": ForwarderDeadLetter.objects.count(),
        "last_forwarded_at": iso(state.last_forwarded_at),
        "last_error": state.last_error or None,
        "last_error_at": iso(state.last_error_at),
    }


# --- Batches and sending ---------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """What the sending threads need from the configuration, read once per run."""

    url: str
    secret: str
    headers: dict[str, str]

    @classmethod
    def of(cls, config: ForwarderConfig) -> "Target":
        return cls(url=config.url, secret=config.secret, headers=dict(config.headers))


@dataclass
class Batch:
    """Events serialized once into the body that every attempt sends and signs."""

    batch_id: str
    entries: list[dict]
    body: bytes
    end_id: int = 0  # the cursor once this batch is done

    @classmethod
    def of(cls, entries: list[dict], end_id: int = 0) -> "Batch":
        ids = ",".join(str(e["event_id"]) for e in entries)
        digest = hashlib.sha256(f"{entries[0]['timestamp']}|{ids}".encode()).hexdigest()[:32]
        batch_id = f"batch_{digest}"
        envelope = {
            "batch_id": batch_id,
            "event_count": len(entries),
            "events": entries,
            "timestamp": iso(timezone.now()),
        }
        # Strict: an event that cannot be encoded raises here (see `_Run._batches`).
        body = json.dumps(envelope, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
        return cls(batch_id=batch_id, entries=entries, body=body, end_id=end_id)

    @classmethod
    def unsendable(cls, entries: list[dict], end_id: int) -> "Batch":
        """Events that cannot be encoded, kept (escaped) for the dead letter queue; never sent."""
        return cls(batch_id="", entries=[strict_json.sanitized(e) for e in entries], body=b"", end_id=end_id)


@dataclass
class Result:
    delivered: bool
    attempts: int
    error: str = ""
    http_status: int | None = None
    stopped: bool = False  # the run ended before this batch finished: not an outcome


def entry_of(row: Mapping[str, Any]) -> dict:
    """An event as AgentField's forwarder sends it: ids and status in `data`, the event's own data under `payload`.

    A collector written for AgentField reads `data.execution_id` (execution
    events) or `data.node_id` (node events) and `data.payload`.
    """
    payload = row["data"]
    if row["source"] == "execution":
        data = {
            "execution_id": row["execution_id"], "workflow_id": row["workflow_id"],
            "agent_node_id": row["agent_node_id"], "status": row["status"],
        }
    elif row["source"] == "node":
        data = {"node_id": row["agent_node_id"], "status": row["status"]}
        if isinstance(payload, dict):
            data.update({k: payload[k] for k in ("old_status", "new_status", "source", "reason") if k in payload})
    else:
        data = {k: row[k] for k in ("execution_id", "status") if row.get(k)}
    data["payload"] = payload
    return {
        "event_id": row["id"],
        "event_type": row["type"],
        "event_source": row["source"],
        "timestamp": iso(row["timestamp"]),
        "data": data,
    }


def send(target: Target, batch: Batch, max_attempts: int, stop: threading.Event | None = None) -> Result:
    """POST the batch until 2xx, a final failure, or `max_attempts`; never raises for HTTP trouble.

    The collector is the operator's own service, so unlike webhooks only what
    `outbound.classify` calls RETRY is retried: a 3xx or another 4xx says the
    collector will not take this batch as it is, and it goes to the dead letters.
    """
    request = outbound.Request(
        target.url, batch.body, batch.batch_id, [target.secret] if target.secret else [],
        target.headers, settings.OBSERVABILITY_TIMEOUT,
    )
    attempts = 0
    while True:
        outcome = outbound.client().send(request)
        attempts += 1
        code = outcome.status
        if outcome.ok:
            return Result(True, attempts, http_status=code)
        error = f"HTTP {code}: {outcome.body[:200]}".strip() if code is not None else outcome.describe()
        delay = None
        if outbound.classify(outcome) == outbound.Verdict.RETRY:
            delay = backoff.delay_for(attempts, settings.OBSERVABILITY_RETRY_SCHEDULE)
        if delay is None or attempts >= max_attempts:
            return Result(False, attempts, error=error, http_status=code)
        delay = backoff.honour_retry_after(outcome.retry_after, delay)
        if stop is not None:
            if stop.wait(delay):
                return Result(False, attempts, error=error, http_status=code, stopped=True)
        else:
            time.sleep(delay)


def attempts_allowed() -> int:
    """The first attempt plus one per entry of the retry schedule (3 by default)."""
    return len(settings.OBSERVABILITY_RETRY_SCHEDULE) + 1


# --- The run loop ----------------------------------------------------------------


def run(seconds: float | None = None, linger: float = LINGER_SECONDS) -> int:
    """Hold the forwarder lease and forward until drained (plus `linger`) or time is up.

    Returns the number of events finished (delivered or dead-lettered). This is
    the django-q2 task and what tests call directly.
    """
    if seconds is None:
        # Stop taking new batches early enough that the slowest batch in flight
        # (every attempt timing out, every delay doubled by Retry-After) still
        # ends before django-q2's task timeout would kill the run.
        slowest = attempts_allowed() * settings.OBSERVABILITY_TIMEOUT + 2.4 * sum(
            settings.OBSERVABILITY_RETRY_SCHEDULE
        )
        room = settings.Q_CLUSTER["timeout"] - slowest - 5
        seconds = max(1.0, min(settings.OBSERVABILITY_RUN_SECONDS, room))
    holder = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    if not leases.acquire(LEASE, holder, settings.OBSERVABILITY_LEASE_SECONDS):
        return 0
    forwarder = _Run(holder, time.monotonic() + seconds, linger)
    try:
        return forwarder.loop()
    finally:
        leases.release(LEASE, holder)
        if forwarder.out_of_time:
            # The backlog outlasted this run: hand over at once rather than at the next tick.
            kick()


class _Run:
    """One lease-holding run. All database work happens on this thread; the pool only sends."""

    def __init__(self, holder: str, deadline: float, linger: float) -> None:
        self.holder = holder
        self.deadline = deadline
        self.linger = linger
        self.out_of_time = False
        self.finished = 0
        self.stop = threading.Event()
        self.inflight: deque[tuple[Batch, Future]] = deque()
        self.pending: deque[dict] = deque()  # matching events read but not yet in a batch
        self.pending_since: datetime | None = None
        self.renewed_at = self.checked_at = self.saved_at = time.monotonic()
        self.read_at = 0.0
        self.caught_up = False
        # Finished batches not yet written to ForwarderState.
        self.acked_to = 0
        self.unsaved_forwarded = 0
        self.unsaved_finished = 0
        self.unsaved_failures: list[tuple[Batch, Result]] = []
        # Whether the latest finished batch was delivered: a success after a failure clears last_error.
        self.last_delivered = False

    def loop(self) -> int:
        config = ForwarderConfig.current()
        if config is None or not config.enabled:
            return 0
        self.target = Target.of(config)
        self.config_version = (config.updated_at, config.enabled)
        regex = _types_regex(config.event_types)
        self.matches = re.compile(regex).match if regex else None
        self.cursor = self.scanned = self.acked_to = ForwarderState.get().cursor
        self.batch_size = max(1, settings.OBSERVABILITY_BATCH_SIZE)
        self.window = max(1, settings.OBSERVABILITY_CONCURRENCY) * 2
        self.attempts = attempts_allowed()
        idle_since: float | None = None
        with ThreadPoolExecutor(
            max(1, settings.OBSERVABILITY_CONCURRENCY), thread_name_prefix="forwarder"
        ) as pool:
            try:
                while self._renew():
                    self._collect()
                    if not self._save(force=not self.inflight):
                        break
                    if time.monotonic() >= self.deadline or self._config_changed():
                        # Finish what is in flight, then hand over to a fresh run
                        # (which reads the new configuration, if that is why).
                        self.out_of_time = True
                    if self.out_of_time:
                        if not self.inflight:
                            break
                        self._wait_head()
                        continue
                    read = self._read()
                    submitted = self._submit(pool)
                    if self.inflight:
                        idle_since = None
                        if not submitted:
                            self._wait_head()
                        continue
                    if read or submitted:
                        idle_since = None
                        continue
                    if self.pending:  # a partial batch waiting for its flush time
                        idle_since = None
                        time.sleep(POLL_SECONDS)
                        continue
                    idle_since = idle_since or time.monotonic()
                    if time.monotonic() - idle_since >= self.linger:
                        break
                    time.sleep(POLL_SECONDS)
            finally:
                # Batches waiting to retry give up; they are not acknowledged, so
                # the cursor stays before them and the next run sends them again.
                self.stop.set()
        self._collect()
        self._save(force=True)
        return self.finished

    def _config_changed(self) -> bool:
        if time.monotonic() - self.checked_at < 1.0:
            return False
        self.checked_at = time.monotonic()
        current = (
            ForwarderConfig.objects.filter(pk=ForwarderConfig.SINGLETON_ID)
            .values_list("updated_at", "enabled")
            .first()
        )
        return current != self.config_version

    def _renew(self) -> bool:
        """Keep the lease; a run that lost it (it stalled, another took over) stops at once."""
        if time.monotonic() - self.renewed_at < settings.OBSERVABILITY_LEASE_SECONDS / 3:
            return True
        self.renewed_at = time.monotonic()
        if leases.acquire(LEASE, self.holder, settings.OBSERVABILITY_LEASE_SECONDS):
            return True
        log.warning("forwarder lost its lease; stopping")
        return False

    def _read(self) -> bool:
        """Read the next chunk of the log into `pending`; True when something was read."""
        if len(self.pending) >= READ_CHUNK or len(self.inflight) >= self.window:
            return False
        if self.caught_up and time.monotonic() - self.read_at < POLL_SECONDS:
            return False
        self.read_at = time.monotonic()
        rows = list(
            PlatformEvent.objects.filter(id__gt=self.scanned)
            .order_by("id")
            .values(
                "id",
                "type",
                "source",
                "timestamp",
                "execution_id",
                "workflow_id",
                "agent_node_id",
                "status",
                "data",
            )[:READ_CHUNK]
        )
        self.caught_up = len(rows) < READ_CHUNK
        if not rows:
            return False
        self.scanned = rows[-1]["id"]
        for row in rows:
            if self.matches is None or self.matches(row["type"]):
                if not self.pending:
                    self.pending_since = row["timestamp"]
                self.pending.append(entry_of(row))
        return True

    def _submit(self, pool: ThreadPoolExecutor) -> bool:
        """Start full batches, and the partial one once its first event is FLUSH_INTERVAL old."""
        submitted = False
        while self.pending and len(self.inflight) < self.window:
            if len(self.pending) < self.batch_size:
                age = (timezone.now() - self.pending_since).total_seconds()
                if age < settings.OBSERVABILITY_FLUSH_INTERVAL:
                    break
            entries = [
                self.pending.popleft() for _ in range(min(self.batch_size, len(self.pending)))
            ]
            for batch, outcome in self._batches(entries):
                if outcome is None:
                    outcome = pool.submit(send, self.target, batch, self.attempts, self.stop)
                self.inflight.append((batch, outcome))
            if self.pending:
                self.pending_since = datetime.fromisoformat(self.pending[0]["timestamp"])
            submitted = True
        return submitted

    @staticmethod
    def _batches(entries: list[dict]) -> list[tuple[Batch, Future | None]]:
        """The batch to send, preceded by each event that cannot be encoded, already
        failed with the reason (it goes to the dead letter queue).

        A value stored before the strict parser (a lone surrogate, an infinite number)
        would otherwise fail the whole batch on every run and hold the cursor forever.
        The failed ones go first, ending before the batch, so the cursor still waits
        for the batch.
        """
        end_id = entries[-1]["event_id"]
        try:
            return [(Batch.of(entries, end_id=end_id), None)]
        except (ValueError, UnicodeEncodeError):
            pass
        good = [entry for entry in entries if strict_json.problem(entry) is None]
        before = good[0]["event_id"] - 1 if good else end_id
        batches: list[tuple[Batch, Future | None]] = []
        for entry in entries:
            why = strict_json.problem(entry)
            if why is None:
                continue
            done: Future = Future()
            done.set_result(Result(False, 0, error=f"the event cannot be encoded as JSON: {why}"))
            batches.append((Batch.unsendable([entry], end_id=min(entry["event_id"], before)), done))
        if good:
            batches.append((Batch.of(good, end_id=end_id), None))
        return batches

    def _wait_head(self) -> None:
        # Only the oldest batch can move the cursor, so that is the one worth waiting for.
        wait([self.inflight[0][1]], timeout=0.2)

    def _collect(self) -> None:
        """Take the finished head of the pipeline into the unsaved progress."""
        while self.inflight and self.inflight[0][1].done():
            batch, future = self.inflight[0]
            try:
                result = future.result()
            except Exception as exc:  # a bug in sending must not stall the cursor silently
                log.exception("forwarder send failed")
                result = Result(False, 1, error=f"internal error: {exc!r}")
            if result.stopped:
                return
            self.inflight.popleft()
            self.acked_to = batch.end_id
            self.unsaved_finished += len(batch.entries)
            self.last_delivered = result.delivered
            if result.delivered:
                self.unsaved_forwarded += len(batch.entries)
            else:
                self.unsaved_failures.append((batch, result))

    def _save(self, force: bool = False) -> bool:
        """Write dead letters and move the cursor over everything finished, in one transaction.

        Progress is written at most every SAVE_SECONDS while batches flow (a crash
        then re-sends at most that much), at once for dead letters and when idle.
        False when the cursor moved under this run (reconfigured, or taken over).
        """
        if self.inflight:
            target = self.acked_to
        elif self.pending:
            target = self.pending[0]["event_id"] - 1
        else:
            target = self.scanned
        target = max(target, self.cursor)
        if target == self.cursor and not self.unsaved_finished:
            return True
        due = time.monotonic() - self.saved_at >= SAVE_SECONDS
        if not (force or due or self.unsaved_failures):
            return True
        now = timezone.now()
        fields: dict[str, Any] = {"cursor": target}
        if self.unsaved_forwarded:
            fields["events_forwarded"] = F("events_forwarded") + self.unsaved_forwarded
            fields["last_forwarded_at"] = now
        if self.unsaved_failures and not self.last_delivered:
            fields["last_error"] = self.unsaved_failures[-1][1].error[:2000]
            fields["last_error_at"] = now
        elif self.unsaved_forwarded:
            # The collector takes batches again: the old error no longer describes it.
            fields["last_error"] = ""
            fields["last_error_at"] = None
        with transaction.atomic():
            moved = ForwarderState.objects.filter(
                pk=ForwarderState.SINGLETON_ID, cursor=self.cursor
            ).update(**fields)
            if not moved:
                log.warning("forwarder cursor changed under this run (reconfigured or taken over)")
                return False
            if self.unsaved_failures:
                ForwarderDeadLetter.objects.bulk_create(
                    dead_letter(entry, r.error, r.attempts, now)
                    for b, r in self.unsaved_failures
                    for entry in b.entries
                )
        self.cursor = target
        self.finished += self.unsaved_finished
        self.unsaved_forwarded = self.unsaved_finished = 0
        self.unsaved_failures = []
        self.saved_at = time.monotonic()
        return True


def dead_letter(entry: dict, error: str, attempts: int, now: datetime) -> ForwarderDeadLetter:
    return ForwarderDeadLetter(
        event_id=entry["event_id"],
        event_type=entry["event_type"],
        event_source=entry["event_source"],
        event_timestamp=datetime.fromisoformat(entry["timestamp"]),
        payload=entry,
        error_message=error[:2000],
        retry_count=attempts,
        created_at=now,
    )


# --- Dead letters ------------------------------------------------------------------


def redrive(ids: Iterable[int] | None = None) -> dict:
    """Send dead letters again (all, or those in `ids`), one attempt per batch, oldest first.

    Walks the queue by id rather than by offset, so deleting delivered entries
    never makes it skip one. Returns the contract's `{success, message, processed, failed}`.
    """
    config = ForwarderConfig.current()
    if config is None:
        raise NotConfigured("No observability webhook is configured to redrive to.")
    target = Target.of(config)
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


def clear_dead_letters() -> int:
    return ForwarderDeadLetter.objects.all().delete()[0]


# --- Triggers ------------------------------------------------------------------------

_config_cache = {"until": 0.0, "enabled": False, "running_until": 0.0}


def _forget_cached_config() -> None:
    _config_cache["until"] = 0.0


def _enabled_cached() -> bool:
    now = time.monotonic()
    if now >= _config_cache["until"]:
        _config_cache["enabled"] = ForwarderConfig.objects.filter(enabled=True).exists()
        _config_cache["until"] = now + CONFIG_CACHE_SECONDS
    return _config_cache["enabled"]


def on_commit(last_id: int) -> None:
    """`events.after_commit` listener: start a run for new events (a lost wake-up costs latency only)."""
    try:
        # A run seen within the last RUNNING_CACHE_SECONDS is still polling the log
        # (it lingers after draining), so most commits cost no query at all.
        if time.monotonic() < _config_cache["running_until"] or not _enabled_cached():
            return
        if leases.is_held(LEASE):
            _config_cache["running_until"] = time.monotonic() + RUNNING_CACHE_SECONDS
            return
        kick()
    except Exception:
        log.exception("forwarder wake-up failed; the sweeper tick will catch up")


def tick() -> None:
    """Sweeper tick: start a run when a collector is configured and events wait after the cursor."""
    if leases.is_held(LEASE):
        return
    config = ForwarderConfig.current()
    if config is None or not config.enabled:
        return
    if PlatformEvent.objects.filter(id__gt=ForwarderState.get().cursor).exists():
        kick()


def kick() -> None:
    """Enqueue one forwarder task unless a run holds the lease; at most one per KICK_SECONDS."""
    if leases.is_held(LEASE):
        return
    if leases.acquire(KICK_LEASE, uuid.uuid4().hex, KICK_SECONDS):
        tasks.enqueue(
            TASK, cluster=settings.DELIVERY_CLUSTER, name="forwarder", timeout=settings.Q_CLUSTER["timeout"]
        )

