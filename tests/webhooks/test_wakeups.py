"""Wake-ups: commits queue one send task between two task starts, whatever the cache."""

import pytest
from django_q.brokers import get_broker

from webhooks import delivery

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
