"""The forwarder's run: one lease-holding loop that reads the log, batches, sends and moves the cursor.

See the package's docstring for the guarantees. Runs are started by `kick()`: after
each committed event transaction (`on_commit`) and from a sweeper tick (`tick`).
"""

import logging
import os
import re
import threading
import time
import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from agentfield_site.jobs import kicks, leases, stopping
from agentfield_site.lib import tasks
from agentfield_site.lib.logs import Repeated

from ..models import ForwarderConfig, ForwarderState, PlatformEvent
from . import dead_letters
from .batches import Batch, Result, Target, attempts_allowed, entry_of, send
from .configuration import enabled_cached, forwarded_types_regex

log = logging.getLogger(__name__)
_wake_up_failed = Repeated(log, "forwarder wake-up failed; the sweeper tick will catch up", logging.ERROR)

LEASE = "forwarder"
TASK = "observability.forwarder.runner.run"
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
# `on_commit` trusts a running forwarder this long per process.
RUNNING_CACHE_SECONDS = 0.5


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
        regex = forwarded_types_regex(config.event_types)
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
                    if stopping.requested() and not self.stop.is_set():
                        # The worker is stopping: no batch waits out a retry delay
                        # (unacknowledged, the next run sends it again); the
                        # attempts on the wire end, then the run does.
                        self.stop.set()
                        self.out_of_time = True
                    if self.out_of_time:
                        # Stopping, a head that is done was stopped (`_collect` takes the
                        # rest): nothing behind it can be acknowledged before it.
                        if not self.inflight or (self.stop.is_set() and self.inflight[0][1].done()):
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
            batch = Batch.of(entries, end_id=entries[-1]["event_id"])
            self.inflight.append((batch, pool.submit(send, self.target, batch, self.attempts, self.stop)))
            if self.pending:
                self.pending_since = datetime.fromisoformat(self.pending[0]["timestamp"])
            submitted = True
        return submitted

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
                dead_letters.record(self.unsaved_failures, now)
        self.cursor = target
        self.finished += self.unsaved_finished
        self.unsaved_forwarded = self.unsaved_finished = 0
        self.unsaved_failures = []
        self.saved_at = time.monotonic()
        return True


# --- Triggers ------------------------------------------------------------------------

_running = {"until": 0.0}


def on_commit(last_id: int) -> None:
    """`events.after_commit` listener: start a run for new events (a lost wake-up costs latency only)."""
    try:
        # A run seen within the last RUNNING_CACHE_SECONDS is still polling the log
        # (it lingers after draining), so most commits cost no query at all.
        if time.monotonic() < _running["until"] or not enabled_cached():
            return
        if leases.is_held(LEASE):
            _running["until"] = time.monotonic() + RUNNING_CACHE_SECONDS
            return
        kick()
    except Exception:
        _wake_up_failed.log()


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
    kicks.kick(LEASE, _enqueue, KICK_SECONDS)


def _enqueue() -> None:
    tasks.enqueue(TASK, cluster=settings.DELIVERY_CLUSTER, name="forwarder", timeout=settings.Q_CLUSTER["timeout"])
