"""Wake-ups: with a shared cache, commits queue one send task between two task starts."""

import pytest
from django_q.brokers import get_broker

from webhooks import delivery

pytestmark = pytest.mark.django_db


def test_wakeups_coalesce_through_a_shared_cache(settings, tmp_path):
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.filebased.FileBasedCache", "LOCATION": str(tmp_path)}
    }
    broker = get_broker(settings.DELIVERY_CLUSTER)
    broker.purge_queue()
    try:
        for _ in range(3):
            delivery.kick()
        assert broker.queue_size() == 1
        delivery.send_due()  # what the task does first: clear the flag
        delivery.kick()
        assert broker.queue_size() == 2
    finally:
        broker.purge_queue()


def test_without_a_shared_cache_every_commit_wakes(settings):
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    broker = get_broker(settings.DELIVERY_CLUSTER)
    broker.purge_queue()
    try:
        delivery.kick()
        delivery.kick()
        assert broker.queue_size() == 2
    finally:
        broker.purge_queue()
