"""One tail of the event log per server process, fanned out to its open streams.

The database log is the truth. A `Tailer` reads `id > cursor` and hands each new
event to every subscribed stream of this process (SSE and WebSocket alike); a
wake-up on the channel layer (when REDIS_URL configures one) makes it read at once,
and it polls every STREAM_POLL_SECONDS regardless, so a lost wake-up costs latency
and never an event. `publish()` commits ids in order (an advisory lock on
PostgreSQL, the single writer on SQLite), so `id > cursor` never skips a late commit.

A subscription holds a bounded queue (STREAM_CLIENT_BUFFER events, and
STREAM_CLIENT_BUFFER_BYTES of them: an execution's result may take a megabyte). A
client too slow to keep up is marked lagging instead of growing the queue: it drops
what it holds and re-reads the log from its own last id, so memory stays bounded and
nothing is lost.

Every database read of the streams runs on one small thread pool (`run_db`) so that
a thousand open streams hold a handful of connections, not a thousand.
"""

import asyncio
import contextlib
import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from django.conf import settings
from django.db import connections
from django.db.models import Max, Min

from agentfield_site.lib import strict_json
from agentfield_site.lib.db_threads import run_in
from agentfield_site.lib.logs import Repeated

from .models import PlatformEvent
from .owners import event_owners
from .stream_filters import EventFilter

log = logging.getLogger(__name__)
_wake_up_failed = Repeated(log, "could not send the event wake-up; streams will poll")

WAKE_GROUP = "observability.events"
PAGE_SIZE = 500
# Channel-layer group membership expires (channels-redis: a day); re-join well before.
_REJOIN_SECONDS = 3600.0
TERMINAL_EXECUTION_TYPES = frozenset(
    {"execution.completed", "execution.failed", "execution.cancelled", "execution.timeout"}
)

T = TypeVar("T")
_POOL_SIZE = 4
_db_pool = ThreadPoolExecutor(max_workers=_POOL_SIZE, thread_name_prefix="streams-db")


async def run_db(fn: Callable[..., T], *args: Any) -> T:
    """Run a synchronous ORM function on the streams' bounded thread pool."""
    return await run_in(_db_pool, fn, *args)


def close_pool_connections() -> None:
    """Close the connections the pool's threads hold (before dropping a test database)."""
    barrier = threading.Barrier(_POOL_SIZE)

    def close() -> None:
        connections.close_all()
        # Holding every task until all have run puts one on each thread.
        barrier.wait(timeout=10)

    for future in [_db_pool.submit(close) for _ in range(_POOL_SIZE)]:
        future.result()


@dataclass(eq=False)
class TailedEvent:
    """One event as the streams send it; each wire form is encoded once, for all clients."""

    id: int
    type: str
    doc: dict
    # The key it belongs to (observability/owners.py), looked up only while a client key's stream is open.
    owner_id: int | None = None
    _sse: bytes = field(default=b"", repr=False)
    _json: str = field(default="", repr=False)

    @classmethod
    def from_row(cls, row: PlatformEvent) -> "TailedEvent":
        return cls(id=row.id, type=row.type, doc=row.as_document())

    @property
    def sse(self) -> bytes:
        """The SSE frame: `id`, dotted `event`, and `data` with the SDK's underscore type."""
        if not self._sse:
            data = {**self.doc, "type": self.type.replace(".", "_")}
            self._sse = f"id: {self.id}\nevent: {self.type}\ndata: {strict_json.dumps(data, separators=(',', ':'))}\n\n".encode()
        return self._sse

    @property
    def json(self) -> str:
        """The WebSocket frame: the event document itself."""
        if not self._json:
            self._json = strict_json.dumps(self.doc, separators=(",", ":"))
        return self._json

    @property
    def is_terminal(self) -> bool:
        return self.type in TERMINAL_EXECUTION_TYPES


def stream_reset(reason: str, *, last_event_id: int, resume_after: int) -> TailedEvent:
    """The synthetic first event of a stream whose resume point the log no longer holds."""
    return TailedEvent(
        id=resume_after,
        type="stream.reset",
        doc={
            "id": resume_after,
            "type": "stream.reset",
            "source": "stream",
            "data": {"reason": reason, "last_event_id": last_event_id, "resume_after": resume_after},
        },
    )


def _read_after(cursor: int, flt: EventFilter | None, limit: int) -> list[TailedEvent]:
    rows = PlatformEvent.objects.filter(id__gt=cursor)
    if flt is not None:
        rows = rows.filter(flt.q())
    return [TailedEvent.from_row(row) for row in rows.order_by("id")[:limit]]


# A stream's replay page holds at most this many bytes of events (and at least one):
# PAGE_SIZE events of a megabyte each (terminal events carry whole results) were
# half a gigabyte per replaying stream, a hundred streams to a client key.
REPLAY_PAGE_BYTES = 4 * 1024 * 1024
_REPLAY_CHUNK = 50


def _replay_page(cursor: int, flt: EventFilter) -> tuple[list[TailedEvent], bool]:
    """One stream's next events after `cursor`, up to PAGE_SIZE or about REPLAY_PAGE_BYTES; and whether more may follow.

    Read in chunks sized by the events seen so far: the first of _REPLAY_CHUNK, the
    next as many as the bytes left would hold at their average size.
    """
    page: list[TailedEvent] = []
    size = 0
    want = _REPLAY_CHUNK
    while True:
        chunk = _read_after(cursor, flt, want)
        for event in chunk:
            page.append(event)
            size += len(event.sse)  # encoded once: the SSE stream sends it, the socket's frame is as large
            if size >= REPLAY_PAGE_BYTES:
                return page, True  # the rest of the chunk is read again with the next page
        if len(page) >= PAGE_SIZE:
            return page, True
        if len(chunk) < want:
            return page, False
        cursor = chunk[-1].id
        want = max(1, min(PAGE_SIZE - len(page), (REPLAY_PAGE_BYTES - size) * len(page) // max(size, 1)))


def _bounds() -> tuple[int | None, int | None]:
    agg = PlatformEvent.objects.aggregate(lo=Min("id"), hi=Max("id"))
    return agg["lo"], agg["hi"]


def _max_id() -> int:
    return PlatformEvent.objects.aggregate(hi=Max("id"))["hi"] or 0


class Listener:
    """One open stream: its filter, its position (`cursor`), and a bounded queue."""

    def __init__(self, tailer: "Tailer", flt: EventFilter, cursor: int | None) -> None:
        self.tailer = tailer
        self.filter = flt
        self.cursor = cursor or 0
        self.queue: asyncio.Queue[TailedEvent] = asyncio.Queue(maxsize=settings.STREAM_CLIENT_BUFFER)
        self.queued_bytes = 0  # of the events in `queue`, as SSE frames (each encoded once, for every stream)
        self.lagging = False
        self._pending: deque[TailedEvent] = deque()
        self._needs_replay = cursor is not None
        self.overflows = 0

    def offer(self, event: TailedEvent) -> None:
        """Called by the tailer; never blocks, never grows past the buffer."""
        if self.lagging or not self.filter.matches(event.doc, event.owner_id):
            return
        size = len(event.sse)
        if self.queued_bytes + size > settings.STREAM_CLIENT_BUFFER_BYTES and not self.queue.empty():
            self.lagging = True
            self.overflows += 1
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.lagging = True
            self.overflows += 1
            return
        self.queued_bytes += size

    def _taken(self, event: TailedEvent) -> TailedEvent:
        self.queued_bytes -= len(event.sse)
        return event

    def prepend(self, event: TailedEvent) -> None:
        """Send `event` before anything else (the `stream.reset` notice)."""
        self._pending.appendleft(event)

    async def next_event(self, timeout: float) -> TailedEvent | None:
        """The next event after `cursor`, in id order; None after `timeout` of silence."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self._pending:
                event = self._pending.popleft()
                if event.id > self.cursor or event.type == "stream.reset":
                    self.cursor = max(self.cursor, event.id)
                    return event
                continue
            if self._needs_replay or self.lagging:
                # Re-arm the live queue first, then read: anything committed before the
                # read is in it, anything later is offered to the queue; ids dedupe.
                self.lagging = False
                self._needs_replay = False
                while not self.queue.empty():
                    self.queue.get_nowait()
                self.queued_bytes = 0
                page, more = await run_db(_replay_page, self.cursor, self.filter)
                self._pending.extend(page)
                self._needs_replay = more
                continue
            if not self.queue.empty():
                event = self._taken(self.queue.get_nowait())
            else:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return None
                try:
                    # asyncio.timeout, not wait_for: no extra task per event.
                    async with asyncio.timeout(remaining):
                        event = self._taken(await self.queue.get())
                except TimeoutError:
                    return None
            if event.id > self.cursor:
                self.cursor = event.id
                return event

    async def next_events(self, timeout: float, limit: int = 100) -> list[TailedEvent]:
        """`next_event`, plus whatever else is ready at once (up to `limit`): a client
        that fell behind catches up in a few large writes instead of many small ones."""
        first = await self.next_event(timeout)
        if first is None:
            return []
        batch = [first]
        size = len(first.sse)
        # One write of at most about a replay page's bytes, however large the events.
        while len(batch) < limit and size < REPLAY_PAGE_BYTES and (self._pending or not self.queue.empty()):
            event = await self.next_event(0)
            if event is None:
                break
            batch.append(event)
            size += len(event.sse)
        return batch

    def close(self) -> None:
        self.tailer.unsubscribe(self)


class Tailer:
    """The per-process reader of the log; runs while at least one stream is open."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.cursor = 0
        self.subscribers: set[Listener] = set()
        self.running = False
        self._ready = asyncio.Event()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._wake_task: asyncio.Task | None = None

    async def subscribe(
        self, flt: EventFilter, last_event_id: int | None, *, announce_gaps: bool = True
    ) -> Listener:
        """Register a stream. Without `last_event_id` it starts live (now); with one it
        replays every matching event after that id first, after a `stream.reset` when
        `announce_gaps` and the log no longer reaches back that far (or never got there)."""
        sub = Listener(self, flt, last_event_id)
        self.subscribers.add(sub)
        if not self.running:
            self.running = True
            self._ready = asyncio.Event()
            self._task = self.loop.create_task(self._run())
        try:
            await self._ready.wait()
            if last_event_id is None:
                sub.cursor = self.cursor
            elif announce_gaps:
                await self._check_resume_point(sub, last_event_id)
        except BaseException:
            self.unsubscribe(sub)
            raise
        return sub

    async def _check_resume_point(self, sub: Listener, last_event_id: int) -> None:
        lo, hi = await run_db(_bounds)
        if lo is not None and last_event_id < lo - 1:
            sub.cursor = lo - 1
            sub.prepend(
                stream_reset(
                    "Events after last_event_id were pruned; resuming from the oldest stored event.",
                    last_event_id=last_event_id,
                    resume_after=lo - 1,
                )
            )
        elif last_event_id > max(hi or 0, self.cursor):
            # An id this log never issued (the database was rebuilt): start live.
            sub.cursor = max(hi or 0, self.cursor)
            sub.prepend(
                stream_reset(
                    "last_event_id is ahead of the event log; resuming from now.",
                    last_event_id=last_event_id,
                    resume_after=sub.cursor,
                )
            )

    def unsubscribe(self, sub: Listener) -> None:
        self.subscribers.discard(sub)

    async def _run(self) -> None:
        try:
            while True:
                try:
                    self.cursor = await run_db(_max_id)
                    break
                except Exception:
                    log.exception("event tail: cannot read the log; retrying")
                    await asyncio.sleep(settings.STREAM_POLL_SECONDS)
            self._ready.set()
            if settings.CHANNEL_LAYERS:
                self._wake_task = self.loop.create_task(self._listen_for_wakeups())
            while self.subscribers:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), settings.STREAM_POLL_SECONDS)
                self._wake.clear()
                await self._read_and_fan_out()
        finally:
            self.running = False
            if self._wake_task is not None:
                self._wake_task.cancel()
                self._wake_task = None

    async def _read_and_fan_out(self) -> None:
        while self.subscribers:
            try:
                page = await run_db(_read_after, self.cursor, None, PAGE_SIZE)
            except Exception:
                log.exception("event tail: read failed; retrying at the next poll")
                return
            if any(sub.filter.owner_id is not None for sub in self.subscribers):
                await self._note_owners(page, self.subscribers)
            for event in page:
                self.cursor = event.id
                for sub in tuple(self.subscribers):
                    sub.offer(event)
            if len(page) < PAGE_SIZE:
                return
            # Let the streams drain between pages of a large backlog.
            await asyncio.sleep(0)

    @staticmethod
    async def _note_owners(page: list[TailedEvent], subscribers: set[Listener]) -> None:
        """Each event's owner (observability/owners.py), for client keys' streams: one lookup per page.

        If it cannot be read, those streams catch up from the log instead (a lagging
        listener replays from its cursor, filtered in SQL): no gap either way.
        """
        try:
            owners = await run_db(event_owners, [event.doc for event in page])
        except Exception:
            log.exception("event tail: cannot read the executions' owners")
            for sub in subscribers:
                if sub.filter.owner_id is not None:
                    sub.lagging = True
            return
        for event, owner_id in zip(page, owners, strict=True):
            event.owner_id = owner_id

    async def _listen_for_wakeups(self) -> None:
        from channels.layers import get_channel_layer

        layer = get_channel_layer()
        channel = ""
        while True:
            try:
                channel = await layer.new_channel("events-tail.")
                await layer.group_add(WAKE_GROUP, channel)
                joined = self.loop.time()
                while self.loop.time() - joined < _REJOIN_SECONDS:
                    await layer.receive(channel)
                    self._wake.set()
            except asyncio.CancelledError:
                if channel:
                    try:
                        await asyncio.shield(layer.group_discard(WAKE_GROUP, channel))
                    except Exception:  # noqa: BLE001 - the group entry expires anyway
                        log.debug("event tail: could not leave the wake-up group", exc_info=True)
                raise
            except Exception:
                log.warning("event tail: wake-up channel failed; polling until it is back", exc_info=True)
                await asyncio.sleep(max(settings.STREAM_POLL_SECONDS, 1.0))


_tailer: Tailer | None = None


def get_tailer() -> Tailer:
    """This process's tailer, bound to the running event loop (daphne has one)."""
    global _tailer
    loop = asyncio.get_running_loop()
    if _tailer is None or _tailer.loop is not loop:
        _tailer = Tailer(loop)
    return _tailer


def open_streams() -> int:
    """Streams (SSE and WebSocket) open on this process now."""
    return len(_tailer.subscribers) if _tailer is not None else 0


# The least time between the starts of two wake-up sends from one process: at most
# this much latency added to a stream, and only while commits come faster.
WAKE_INTERVAL = 0.02


class _Wakeups:
    """This process's sender of wake-ups: one event loop thread, at most one send in flight.

    A wake-up is sent after every commit that wrote events, from whatever thread
    committed. `async_to_sync` would start a thread and an event loop for each, and
    the Redis layer a connection per loop: milliseconds that every submit and
    every batch of delivery results waited for. Here the commit only notes the
    newest id and hands over; commits that come while a send is out are folded
    into one more send with the newest id (a tailer reads the log from its own
    cursor, so one wake-up for many commits misses nothing), and a send starts no
    sooner than `WAKE_INTERVAL` after the one before.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.pid = 0
        self.newest = 0
        self.sending = False
        self.last_send = float("-inf")  # on the sending loop's clock

    def note(self, last_id: int) -> None:
        with self.lock:
            self.newest = max(self.newest, last_id)
            if self.sending:
                return
            self.sending = True
            loop = self._loop()
        try:
            asyncio.run_coroutine_threadsafe(self._send(), loop)
        except RuntimeError:  # the loop is gone (interpreter shutdown): the tailers poll
            with self.lock:
                self.sending = False

    def _loop(self) -> asyncio.AbstractEventLoop:
        if self.loop is None or self.pid != os.getpid():  # a forked worker starts its own
            self.loop, self.pid = asyncio.new_event_loop(), os.getpid()
            threading.Thread(target=self.loop.run_forever, name="event-wakeups", daemon=True).start()
        return self.loop

    async def _send(self) -> None:
        from channels.layers import get_channel_layer

        loop = asyncio.get_running_loop()
        while True:
            # Not sooner than WAKE_INTERVAL after the last send began: the commits
            # meanwhile fold into this one. A send costs a busy web process about a
            # millisecond; under a stream of submits, one per commit was an eighth
            # of the process, for wake-ups of which a tailer needs one.
            await asyncio.sleep(max(0.0, self.last_send + WAKE_INTERVAL - loop.time()))
            self.last_send = loop.time()
            with self.lock:
                sent = self.newest
            try:
                await get_channel_layer().group_send(WAKE_GROUP, {"type": "events.wake", "last_id": sent})
            except Exception:  # noqa: BLE001 - a lost wake-up costs latency only
                _wake_up_failed.log()
            with self.lock:
                if self.newest == sent:
                    self.sending = False
                    return


_wakeups = _Wakeups()


def send_wakeup(last_id: int) -> None:
    """`events.after_commit` listener: tell every tailer that the log grew.

    Best effort by design: the tailers poll anyway, so a failure is logged and
    swallowed, and the caller never waits for it (`_Wakeups`).
    """
    if settings.CHANNEL_LAYERS:
        _wakeups.note(last_id)
