"""`manage.py serve --web-processes N`: daphne processes sharing one socket, restarted when one dies."""

import os
import signal

import pytest
import requests

from devtools.processes import children_of, free_port, serving
from devtools.waiting import wait_for

pytestmark = pytest.mark.processes


def _daphnes(serve_pid: int) -> dict[int, str]:
    return {pid: cmd for pid, cmd in children_of(serve_pid).items() if "daphne" in cmd}


def _all_answer(url: str, times: int) -> bool:
    """`times` requests, each on a new connection (the kernel hands each to any live process)."""
    return all(requests.get(url, timeout=5, headers={"Connection": "close"}).status_code == 200 for _ in range(times))


def test_two_processes_share_the_port_and_a_killed_one_is_restarted_while_the_other_serves(proc_env):
    port = free_port()
    health = f"http://127.0.0.1:{port}/health"
    args = ("--web-processes", "2", "--no-worker", "--no-agent")
    with serving(proc_env, port, args=args) as (serve, seen):
        wait_for(lambda: requests.get(health, timeout=1).ok, timeout=60, what=f"serve\n{serve.log()}")
        first = wait_for(lambda: (d := _daphnes(serve.popen.pid)) and len(d) == 2 and d, timeout=30,
                         what="two daphne processes")
        seen.update(first)
        assert all("--fd" in cmd for cmd in first.values()), first
        victim, survivor = sorted(first)

        os.kill(victim, signal.SIGKILL)
        assert _all_answer(health, 20), "the port kept serving on the other process"
        now = wait_for(lambda: (d := _daphnes(serve.popen.pid)) and len(d) == 2 and victim not in d and d,
                       timeout=30, what=f"the killed process to be started again\n{serve.log()}")
        seen.update(now)
        assert serve.popen.poll() is None, serve.log()
        assert "daphne-1 was killed by SIGKILL; starting it again" in serve.log() or \
            "daphne-2 was killed by SIGKILL; starting it again" in serve.log(), serve.log()

        # The one started again serves too: with the survivor gone, it is all there is.
        (restarted,) = set(now) - {survivor}
        os.kill(survivor, signal.SIGKILL)
        wait_for(lambda: _all_answer(health, 5), timeout=30, what=f"the restarted process {restarted} to serve")
        assert serve.popen.poll() is None, serve.log()
