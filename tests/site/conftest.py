import threading

import pytest

from agentfield_site.lib import strict_json


@pytest.fixture
def parses(monkeypatch) -> list[str]:
    """The threads on which a request body was parsed as JSON (either fast lane, or DRF)."""
    seen: list[str] = []
    original = strict_json.loads

    def recording(data, *args, **kwargs):
        seen.append(threading.current_thread().name)
        return original(data, *args, **kwargs)

    monkeypatch.setattr(strict_json, "loads", recording)
    return seen
