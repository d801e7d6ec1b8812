"""The request limit in a real daphne: open streams hold no place, and a crowd is served in turn.

The limit's own rules are in tests/lib/test_concurrency_limit.py; here it is the
process `make run` and production start, with one place only.
"""

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

pytestmark = pytest.mark.processes


def test_open_streams_hold_no_place_and_a_crowd_is_served_in_turn(proc_env):
    web = proc_env.daphne({"MAX_CONCURRENT_REQUESTS": "1"})
    streams = [
        requests.get(f"{web.url}/api/ui/v1/executions/events", stream=True, timeout=(5, 30)) for _ in range(3)
    ]
    try:
        assert [s.status_code for s in streams] == [200, 200, 200]
        assert all(s.headers["Content-Type"].startswith("text/event-stream") for s in streams)

        def list_executions(_: int) -> int:
            return requests.get(f"{web.url}/api/v1/executions", timeout=30).status_code

        with ThreadPoolExecutor(max_workers=24) as pool:
            statuses = list(pool.map(list_executions, range(48)))
        assert statuses == [200] * 48
    finally:
        for stream in streams:
            stream.close()
