"""`manage.py serve --web-processes N`: daphne processes sharing one socket, restarted when one dies."""

import asyncio
import contextlib
import os
import signal
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import websockets

from devtools.processes import children_of, free_port, serving
from devtools.waiting import wait_for

pytestmark = pytest.mark.processes


def _daphnes(serve_pid: int) -> dict[int, str]:
    return {pid: cmd for pid, cmd in children_of(serve_pid).items() if "daphne" in cmd}


def _all_answer(url: str, times: int) -> bool:
    """`times` requests, each on a new connection (the kernel hands each to any live process)."""
    return all(requests.get(url, timeout=5, headers={"Connection": "close"}).status_code == 200 for _ in range(times))


@contextlib.contextmanager
def _two_web_processes(proc_env):
    """`manage.py serve --web-processes 2` (the web tier only), answering; yields (serve, children seen, port)."""
    port = free_port()
    with serving(proc_env, port, args=("--web-processes", "2", "--no-worker", "--no-agent")) as (serve, seen):
        wait_for(lambda: requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok, timeout=60,
                 what=f"serve\n{serve.log()}")
        yield serve, seen, port


def test_two_processes_share_the_port_and_a_killed_one_is_restarted_while_the_other_serves(proc_env):
    with _two_web_processes(proc_env) as (serve, seen, port):
        health = f"http://127.0.0.1:{port}/health"
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


def _established_by_process(pids, port: int) -> dict[int, int]:
    """How many established connections to `port` each of `pids` holds (from /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # ESTABLISHED, local port
                    inodes.add(fields[9])
    counts = {}
    for pid in pids:
        links = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(FileNotFoundError):  # closed meanwhile (a database connection, say)
                links.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        counts[pid] = sum(f"socket:[{inode}]" in links for inode in inodes)
    return counts


def test_a_burst_of_keep_alive_connections_is_shared_between_the_processes(proc_env):
    # Twisted accepted up to 100 connections a turn, so the process that woke first took
    # a burst whole (31 of 32), and served nearly every request on them.
    with _two_web_processes(proc_env) as (serve, seen, port):
        daphnes = wait_for(lambda: (d := _daphnes(serve.popen.pid)) and len(d) == 2 and d, timeout=30,
                           what="two daphne processes")
        seen.update(daphnes)

        async def burst(size: int) -> dict[int, int]:
            streams = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port) for _ in range(size)))
            for _, writer in streams:
                writer.write(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            for reader, _ in streams:
                assert b" 200 " in await reader.readuntil(b"\r\n\r\n")
            counts = _established_by_process(daphnes, port)
            for _, writer in streams:
                writer.close()
            return counts

        # Both processes up: each has taken a connection of a small burst (the first may
        # answer before the second is listening).
        wait_for(lambda: all(asyncio.run(burst(8)).values()), timeout=30, what="both processes to take connections")
        shares = sorted(asyncio.run(burst(32)).values())
        assert sum(shares) == 32, shares
        # Taken in turns, not whole (31 to 1 before); a busy machine slows one process's
        # turns, so the split is not even (7 to 25 seen in CI beside other work).
        assert shares[0] >= 5, f"32 connections opened at once split {shares}"


def test_websockets_open_on_every_process_after_a_burst_of_requests(proc_env):
    # Taking turns re-registers the socket's reader from a timer, and Twisted's timer
    # ran in the context of whatever last rescheduled it, a request often. Connections
    # accepted afterwards inherited that request's asgiref context, long exited: every
    # WebSocket (whose authentication hops to a thread) was answered 500 from then on.
    with _two_web_processes(proc_env) as (serve, _, port):
        health = f"http://127.0.0.1:{port}/health"

        def ten_requests(_):
            with requests.Session() as session:
                return [session.get(health, timeout=10).status_code for _ in range(10)]

        with ThreadPoolExecutor(20) as pool:
            assert all(status == 200 for statuses in pool.map(ten_requests, range(20)) for status in statuses)

        async def connect_and_close() -> None:
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws/events", open_timeout=10):
                pass

        async def connections() -> None:
            # Each on a new connection: with two processes taking turns, both are reached.
            for _ in range(8):
                await connect_and_close()

        asyncio.run(connections())
        assert "Exception inside application" not in serve.log(), serve.log()
