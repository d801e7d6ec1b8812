import pytest


@pytest.fixture
def poll_without_channel_layer(settings):
    """For in-process stream tests: poll the log instead of Redis wake-ups.

    They run one event loop per test, and a channel layer bound to an earlier loop
    can hang the next one's shutdown. Wake-ups across processes over Redis are
    covered by the real-daphne tests (test_streams_across_processes).
    """
    settings.CHANNEL_LAYERS = {}


@pytest.fixture
def fast(settings):
    """A forwarder with short timings that may send to loopback collectors."""
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    settings.API_KEYS = []
    settings.OBSERVABILITY_BATCH_SIZE = 10
    settings.OBSERVABILITY_FLUSH_INTERVAL = 0.1
    settings.OBSERVABILITY_RETRY_SCHEDULE = [0.05, 0.1]
    settings.OBSERVABILITY_TIMEOUT = 2.0
    return settings
