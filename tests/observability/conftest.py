import pytest


@pytest.fixture
def poll_without_channel_layer(settings):
    """For in-process stream tests: poll the log instead of Redis wake-ups.

    They run one event loop per test, and a channel layer bound to an earlier loop
    can hang the next one's shutdown. Wake-ups across processes over Redis are
    covered by the real-daphne tests (test_streams_across_processes).
    """
    settings.CHANNEL_LAYERS = {}
