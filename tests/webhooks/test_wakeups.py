"""Wake-ups: commits queue one send task between two task starts, whatever the cache."""

import pytest
from django_q.brokers import get_broker

from agentfield_site.jobs import leases
from agentfield_site.lib.outbound import destination_of
from devtools.loopback import LoopbackServer, Reply
from devtools.waiting import wait_for
from tests.webhooks.conftest import sender_thread
from webhooks import delivery
from webhooks.models import Delivery

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("cache", ["django.core.cache.backends.locmem.LocMemCache", None], ids=["locmem", "configured"])
def test_wakeups_coalesce_until_the_task_starts(settings, cache):
    if cache:  # the embedded default's per-process cache coalesces as well: the lease is a row
        settings.CACHES = {"default": {"BACKEND": cache}}
    broker = get_broker(settings.DELIVERY_CLUSTER)
    broker.purge_queue()
    try:
        for _ in range(3):
            delivery.kick()
        assert broker.queue_size() == 1
        delivery.send_due()  # what the task does first: clear the wake-up
        delivery.kick()
        assert broker.queue_size() == 2
    finally:
        broker.purge_queue()


def _due_row(url: str, execution_id: str) -> None:
    """A due delivery made without the commit's wake-up, so only the tick can wake anyone for it."""
    Delivery.objects.create(kind=Delivery.Kind.COMPLETION, event_type="execution.completed", execution_id=execution_id,
                            url=url, destination=destination_of(url), body=b"{}")


@pytest.mark.django_db(transaction=True)
def test_the_tick_leaves_due_rows_to_a_running_sender_with_room(settings):
    """A second sender woken by the tick would only compete for the first one's places."""
    broker = get_broker(settings.DELIVERY_CLUSTER)
    broker.purge_queue()
    try:
        with LoopbackServer(Reply(200, delay=1.0)) as receiver:
            _due_row(receiver.url, "exec_slow")
            sender = sender_thread()
            sender.start()
            wait_for(lambda: leases.is_held(delivery.LISTENING), timeout=5, what="the sender to hold LISTENING")
            _due_row(receiver.url, "exec_next")
            delivery._last_tick_kick = 0.0
            delivery.tick()
            assert broker.queue_size() == 0  # the running sender claims it itself
            sender.join(timeout=10)
            assert Delivery.objects.filter(status=Delivery.Status.DELIVERED).count() == 2
        assert not leases.is_held(delivery.LISTENING)  # let go when the sender stopped
        _due_row("http://127.0.0.1:9/gone", "exec_after")
        delivery._last_tick_kick = 0.0
        delivery.tick()
        assert broker.queue_size() == 1  # no sender runs: the tick wakes one
    finally:
        broker.purge_queue()
