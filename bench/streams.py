"""SSE fan-out: event -> client latency with 100 and 1,000 open streams on one daphne.

`python -m bench streams [--clients=100,1000] [--events=20] [--interval=0.25]`. Runs on
the database that DATABASE_URL names (SQLite by default; add REDIS_URL for channel-layer
wake-ups), in a throwaway database created beside it. One daphne process serves the
streams; this process opens the clients (asyncio, raw sockets), then publishes events
one commit each and times each event from just before its commit to its arrival at
every client. Every client must receive every event, else the run fails. The table
shows latency p50/p99 over all (client, event) pairs and daphne's resident memory.
"""

import asyncio
import gc
import os
import re
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.environment import parse_options, setup_django
from devtools.processes import database_url, free_port

ROOT = Path(__file__).resolve().parents[1]
_SEQ = re.compile(rb'"seq":(\d+)')




def _raise_open_files(needed: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(hard, max(soft, needed)) if hard != resource.RLIM_INFINITY else max(soft, needed)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target






def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _start_daphne(port: int) -> subprocess.Popen:
    env = {**os.environ, "DATABASE_URL": database_url(), "TEST_DB_NAME": "", "DEBUG": "false", "LOG_LEVEL": "WARNING"}
    # BENCH_DAPHNE_PREFIX="-m cProfile -o /tmp/daphne.prof" profiles the server.
    prefix = os.environ.get("BENCH_DAPHNE_PREFIX", "").split()
    proc = subprocess.Popen(
        [sys.executable, *prefix, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "--access-log", os.devnull,
         "agentfield_site.asgi:application"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"daphne did not start: {proc.stderr.read().decode(errors='replace')[-2000:]}")


class Client:
    """One SSE connection; records when each `seq` arrived."""

    def __init__(self) -> None:
        self.arrivals: dict[int, float] = {}
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self, port: int) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        self.writer.write(
            f"GET /api/ui/v1/executions/events?types=execution.log HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        if b" 200 " not in head.split(b"\r\n", 1)[0]:
            raise SystemExit(f"stream refused: {head[:200]!r}")
        # The `retry:` preamble follows the subscription: from here on nothing is missed.
        await self.reader.readuntil(b"retry: 3000\n\n")

    async def read(self, expected: int) -> None:
        while len(self.arrivals) < expected:
            frame = await self.reader.readuntil(b"\n\n")
            now = time.perf_counter()
            match = _SEQ.search(frame)
            if match:
                self.arrivals.setdefault(int(match.group(1)), now)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def _run_case(port: int, daphne_pid: int, clients_n: int, events_n: int, interval: float) -> dict:
    from django.db import connections

    from observability.events import publish

    clients = [Client() for _ in range(clients_n)]
    # Open in waves: a burst of a thousand SYNs overflows the listen backlog.
    for start in range(0, clients_n, 100):
        await asyncio.gather(*(c.open(port) for c in clients[start : start + 100]))
    rss_connected = _rss_mib(daphne_pid)

    sent_at: dict[int, float] = {}

    def publish_all() -> None:
        try:
            for seq in range(events_n):
                sent_at[seq] = time.perf_counter()
                publish("execution.log", execution_id=f"bench_{seq}", data={"seq": seq})
                time.sleep(interval)
        finally:
            connections.close_all()

    readers = [asyncio.ensure_future(c.read(events_n)) for c in clients]
    # The clients are the measuring instrument: keep their own GC pauses out of the figures.
    gc.disable()
    try:
        await asyncio.to_thread(publish_all)
        rss_peak = _rss_mib(daphne_pid)
        await asyncio.wait_for(asyncio.gather(*readers), timeout=60)
    except TimeoutError:
        missing = sum(events_n - len(c.arrivals) for c in clients)
        raise SystemExit(f"{clients_n} clients: {missing} (client, event) deliveries missing after 60 s") from None
    finally:
        gc.enable()
    rss_peak = max(rss_peak, _rss_mib(daphne_pid))
    latencies = sorted(
        (arrived - sent_at[seq]) * 1000 for c in clients for seq, arrived in c.arrivals.items()
    )
    # Time to the first client: the wake-up and the read; the rest is the fan-out.
    first = [min(c.arrivals[seq] for c in clients) - sent_at[seq] for seq in range(events_n)]
    for c in clients:
        c.close()
    await asyncio.sleep(0.5)
    return {
        "clients": clients_n,
        "samples": len(latencies),
        "p50": statistics.median(latencies),
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "max": latencies[-1],
        "first_p50": statistics.median(first) * 1000,
        "rss_connected": rss_connected,
        "rss_peak": rss_peak,
    }


def main(argv: list[str]) -> None:
    options = parse_options(argv)
    counts = [int(n) for n in options.get("clients", "100,1000").split(",")]
    events_n = int(options.get("events", 20))
    interval = float(options.get("interval", 0.25))
    limit = _raise_open_files(max(counts) * 2 + 256)

    setup_django("streams")
    from django.conf import settings
    from django.db import connection

    test_db = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    port = free_port()
    daphne = _start_daphne(port)
    rows = []
    try:
        rss_idle = _rss_mib(daphne.pid)
        for n in counts:
            rows.append(asyncio.run(_run_case(port, daphne.pid, n, events_n, interval)))
    finally:
        daphne.terminate()
        try:
            daphne.wait(timeout=10)
        except subprocess.TimeoutExpired:
            daphne.kill()
        connection.creation.destroy_test_db(test_db, verbosity=0)

    wake = "channel-layer wake-ups (Redis)" if settings.CHANNEL_LAYERS else f"polling every {settings.STREAM_POLL_SECONDS} s"
    print(
        f"database: {connection.vendor}; {wake}; one daphne process; {events_n} events, one commit each, "
        f"{interval * 1000:.0f} ms apart; open-files limit {limit}; daphne idle RSS {rss_idle:.0f} MiB\n"
    )
    print("| SSE clients | deliveries | first client p50 ms | p50 ms | p99 ms | max ms | daphne RSS connected MiB | daphne RSS peak MiB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['clients']:,} | {r['samples']:,} | {r['first_p50']:.0f} | {r['p50']:.0f} | {r['p99']:.0f} | {r['max']:.0f} | "
            f"{r['rss_connected']:.0f} | {r['rss_peak']:.0f} |"
        )
    print("\nTarget: 1,000 clients at p99 < 500 ms. Latency: from just before the commit to the client's read.")


if __name__ == "__main__":
    main(sys.argv[1:])
