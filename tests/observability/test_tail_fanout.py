"""The per-process tail: one reader fans out to many subscriptions; slow ones stay bounded."""

import asyncio
import time

import pytest
from django.db import connections

from devtools.waiting import wait_for, wait_for_async
from observability import events, tail
from observability.stream_filters import EventFilter

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("poll_without_channel_layer")]


@pytest.fixture(autouse=True)
def _release_stream_connections():
    yield
    tail.close_pool_connections()


def publish_batch(n: int, prefix: str) -> list[int]:
    try:
        return [events.publish("execution.log", execution_id=f"{prefix}{i}").id for i in range(n)]
    finally:
        connections.close_all()


async def drain(sub: tail.Listener, count: int) -> list[int]:
    got = []
    while len(got) < count:
        event = await sub.next_event(5)
        assert event is not None, f"stream went quiet after {got}"
        got.append(event.id)
    return got


def test_slow_subscription_overflows_its_buffer_then_rereads_the_log(settings):
    settings.STREAM_CLIENT_BUFFER = 3

    async def scenario():
        tailer = tail.get_tailer()
        slow = await tailer.subscribe(EventFilter(), None)
        fast = await tailer.subscribe(EventFilter(), None)
        ids = await asyncio.to_thread(publish_batch, 20, "x")
        fast_ids = []
        # Only the fast one reads while the events arrive.
        async def read_fast():
            fast_ids.extend(await drain(fast, 20))

        await read_fast()
        async def overflowed() -> bool:
            return slow.overflows >= 1

        await wait_for_async(overflowed, timeout=5, what="the slow subscription to overflow")
        assert slow.queue.qsize() <= 3
        slow_ids = await drain(slow, 20)
        assert await slow.next_event(0.3) is None
        slow.close()
        fast.close()
        return ids, fast_ids, slow_ids

    ids, fast_ids, slow_ids = asyncio.run(scenario())
    assert fast_ids == ids
    assert slow_ids == ids


def test_a_slow_subscription_holds_at_most_its_bytes_of_large_events_then_rereads_the_log(settings):
    """An execution's result may take a megabyte: a thousand such events queued for one stream
    that does not read were a gigabyte. The queue is bounded in bytes too."""
    settings.STREAM_CLIENT_BUFFER_BYTES = 64 * 1024

    def publish_large(n: int) -> list[int]:
        try:
            return [events.publish("execution.completed", execution_id=f"big{i}", data={"result": "r" * 20_000}).id
                    for i in range(n)]
        finally:
            connections.close_all()

    async def scenario():
        tailer = tail.get_tailer()
        slow = await tailer.subscribe(EventFilter(), None)
        ids = await asyncio.to_thread(publish_large, 10)

        async def overflowed() -> bool:
            return slow.overflows >= 1

        await wait_for_async(overflowed, timeout=5, what="the slow subscription to overflow")
        held = slow.queued_bytes
        assert 0 < held <= 64 * 1024 and slow.queue.qsize() <= 3
        got = await drain(slow, 10)
        assert slow.queued_bytes == 0
        slow.close()
        return ids, got

    ids, got = asyncio.run(scenario())
    assert got == ids, "nothing lost: the rest came from the log"


def test_one_reader_for_many_subscriptions_and_it_stops_when_they_leave():
    async def scenario():
        tailer = tail.get_tailer()
        subs = [await tailer.subscribe(EventFilter(execution_id="y3" if i % 2 else ""), None) for i in range(50)]
        assert tailer.running
        ids = await asyncio.to_thread(publish_batch, 5, "y")
        results = await asyncio.gather(*(drain(s, 1 if i % 2 else 5) for i, s in enumerate(subs)))
        for sub in subs:
            sub.close()
        async def stopped() -> bool:
            return not tailer.running

        await wait_for_async(stopped, timeout=5, what="the reader to stop")
        return ids, results, tailer.running

    ids, results, still_running = asyncio.run(scenario())
    for i, got in enumerate(results):
        assert got == ([ids[3]] if i % 2 else ids)
    assert not still_running


def test_wakeup_listener_is_registered_after_commit():
    assert tail.send_wakeup in events.after_commit


def test_wakeups_never_hold_up_the_committer_and_a_burst_folds_into_few_sends(settings, monkeypatch):
    """Commits only note the newest id; one send is out at a time, and the last carries the newest id."""
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    sent: list[int] = []

    class SlowLayer:
        async def group_send(self, group, message):
            assert group == tail.WAKE_GROUP and message["type"] == "events.wake"
            await asyncio.sleep(0.05)
            sent.append(message["last_id"])

    monkeypatch.setattr("channels.layers.get_channel_layer", lambda *a, **k: SlowLayer())
    wakeups = tail._Wakeups()
    monkeypatch.setattr(tail, "_wakeups", wakeups)
    started = time.monotonic()
    for last_id in range(1, 101):
        tail.send_wakeup(last_id)
    assert time.monotonic() - started < 0.05, "a commit never waits for the send"
    wait_for(lambda: not wakeups.sending, timeout=5, interval=0.01, what="the sends to end")
    assert sent[-1] == 100 and 1 <= len(sent) <= 3, sent
    tail.send_wakeup(101)
    wait_for(lambda: sent[-1] == 101, timeout=5, interval=0.01, what="a later wake-up")


def test_a_steady_stream_of_commits_sends_at_most_one_wakeup_per_interval(settings, monkeypatch):
    """Sends quicker than the commits still fold: no more than one per WAKE_INTERVAL, the newest id last."""
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    sent: list[tuple[float, int]] = []

    class QuickLayer:
        async def group_send(self, group, message):
            sent.append((time.monotonic(), message["last_id"]))

    monkeypatch.setattr("channels.layers.get_channel_layer", lambda *a, **k: QuickLayer())
    wakeups = tail._Wakeups()
    monkeypatch.setattr(tail, "_wakeups", wakeups)
    started = time.monotonic()
    for last_id in range(1, 41):  # a commit every 5 ms or so
        tail.send_wakeup(last_id)
        time.sleep(0.005)
    elapsed = time.monotonic() - started
    wait_for(lambda: not wakeups.sending, timeout=5, interval=0.01, what="the sends to end")
    assert sent[-1][1] == 40
    assert len(sent) <= elapsed / tail.WAKE_INTERVAL + 2, (len(sent), elapsed)
    assert all(b[0] - a[0] >= tail.WAKE_INTERVAL * 0.9 for a, b in zip(sent, sent[1:], strict=False)), sent


def test_a_wakeup_after_a_quiet_spell_goes_at_once(settings, monkeypatch):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    sent: list[float] = []

    class QuickLayer:
        async def group_send(self, group, message):
            sent.append(time.monotonic())

    monkeypatch.setattr("channels.layers.get_channel_layer", lambda *a, **k: QuickLayer())
    monkeypatch.setattr(tail, "WAKE_INTERVAL", 2.0)
    monkeypatch.setattr(tail, "_wakeups", tail._Wakeups())
    committed = time.monotonic()
    tail.send_wakeup(1)
    wait_for(lambda: sent, timeout=5, interval=0.001, what="the wake-up")
    assert sent[0] - committed < 1.0, "the interval holds back only a send that follows another"


def publish_large(n: int, size: int) -> list[int]:
    try:
        return [
            events.publish("execution.completed", execution_id=f"big{i}", data={"result": "r" * size}).id
            for i in range(n)
        ]
    finally:
        connections.close_all()


def test_a_replay_page_is_bounded_in_bytes_and_the_replay_misses_nothing(monkeypatch):
    # PAGE_SIZE events of a megabyte each (terminal events carry whole results) were
    # half a gigabyte per replaying stream; a page now stops at about REPLAY_PAGE_BYTES.
    monkeypatch.setattr(tail, "REPLAY_PAGE_BYTES", 20_000)
    ids = publish_large(30, 5_000)

    page, more = tail._replay_page(0, EventFilter())
    assert more and 4 <= len(page) <= 5, len(page)
    assert sum(len(e.sse) for e in page) < 20_000 + 6_000
    assert [e.id for e in page] == ids[: len(page)]
    small_page, more = tail._replay_page(ids[-1], EventFilter())
    assert small_page == [] and not more

    async def scenario():
        sub = await tail.get_tailer().subscribe(EventFilter(), 0, announce_gaps=False)
        try:
            got = []
            while len(got) < len(ids):
                batch = await sub.next_events(5)
                assert batch, f"stream went quiet after {got}"
                # One SSE write holds about a page's bytes, not `limit` events of any size.
                assert sum(len(e.sse) for e in batch) < 20_000 + 6_000
                got.extend(e.id for e in batch)
            return got
        finally:
            sub.close()

    assert asyncio.run(scenario()) == ids
