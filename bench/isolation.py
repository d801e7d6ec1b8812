"""Delivery isolation: a healthy receiver's latency while another destination is dead or slow.

`python -m bench isolation [--healthy=100] [--rate=20] [--backlogs=300,5000]`. Real workers
(`manage.py worker`, default settings: 10 s timeout, breaker after 5 failures,
32 in flight per destination) on a throwaway database beside DATABASE_URL's.
For each scenario, a backlog of completion webhooks is put in front of the
workers for one bad destination, then `--healthy` executions finish one after
another (`enqueue_completion` in a transaction, as the executions app does) with
webhooks to a healthy receiver: finished -> received, p50 and p99.

- baseline: no backlog;
- blackhole: the backlog goes to a server that accepts connections and never answers;
- slow: the backlog goes to a server that answers 200 after 9 s.

Targets: healthy p99 under 1 s and under 3x the baseline p99; the blackhole is
opened no more often than attempts were recorded for it (no duplicate sends).
"""

import asyncio
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.environment import database_url, free_port, setup_django
from bench.webhooks import ROOT, SECRET, _payload, _percentile, serve_receiver


def serve_bad(port: int, mode: str, connections) -> None:
    """A blackhole (accept, never answer) or a slow receiver (200 after 9 s); counts connections."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with connections.get_lock():
            connections.value += 1
        try:
            if mode == "blackhole":
                while await reader.read(65536):
                    pass
                return
            while True:  # keep-alive: one slow answer per request
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                     if line.lower().startswith(b"content-length:")), 0,
                )
                await reader.readexactly(length)
                await asyncio.sleep(9)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _backlog(url: str, count: int, tag: str) -> None:
    from agentfield_site.lib.outbound import destination_of
    from webhooks.completion import encode_body
    from webhooks.models import Delivery

    destination = destination_of(url)
    for start in range(0, count, 1000):
        Delivery.objects.bulk_create(
            Delivery(
                kind=Delivery.COMPLETION, event_type="execution.completed", execution_id=f"{tag}_{i}",
                url=url, destination=destination, secret=SECRET, body=encode_body(_payload(f"{tag}_{i}")),
            )
            for i in range(start, min(count, start + 1000))
        )


def _healthy(base: str, count: int, rate: float, tag: str) -> list[float]:
    """Finished -> received (ms) for `count` executions finishing at `rate` per second."""
    import requests
    from django.db import transaction

    from webhooks.completion import enqueue_completion

    finished: dict[str, float] = {}
    for i in range(count):
        execution_id = f"{tag}_{i}"
        finished[execution_id] = time.time()
        with transaction.atomic():
            enqueue_completion(execution_id=execution_id, url=f"{base}/hook", secret=SECRET, headers={},
                               payload=_payload(execution_id))
        time.sleep(1 / rate)
    deadline = time.monotonic() + 60
    while True:
        arrived = requests.get(f"{base}/stats", params={"times": 1}, timeout=5).json()["arrived"]
        if all(e in arrived for e in finished):
            break
        if time.monotonic() > deadline:
            missing = sum(e not in arrived for e in finished)
            raise SystemExit(f"{missing} healthy webhooks never arrived in scenario {tag}")
        time.sleep(0.1)
    return [(arrived[e] - finished[e]) * 1000 for e in finished]


def main(argv: list[str]) -> None:
    options = dict(a.lstrip("-").split("=", 1) for a in argv if "=" in a)
    healthy_n = int(options.get("healthy", 100))
    rate = float(options.get("rate", 20))
    backlogs = [int(n) for n in options.get("backlogs", "300,5000").split(",")]

    ctx = multiprocessing.get_context("spawn")
    port = free_port()
    receiver = ctx.Process(target=serve_receiver, args=(port,), daemon=True)
    receiver.start()
    base = f"http://127.0.0.1:{port}"
    setup_django("isolation")

    import requests
    from django.conf import settings
    from django.db import connection

    from webhooks.models import Attempt, Delivery, Destination

    test_db = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    env = {**os.environ, "DATABASE_URL": database_url(), "TEST_DB_NAME": "", "PYTHONUNBUFFERED": "1",
           "SWEEP_TICK_SECONDS": "0.5"}
    tmp = Path(tempfile.mkdtemp(prefix="bench-isolation-"))
    log_path = tmp / "worker.log"
    worker = subprocess.Popen([sys.executable, "manage.py", "worker"], cwd=ROOT, env=env,
                              stdout=log_path.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    bad_servers = []
    rows = []
    try:
        _wait(lambda: requests.post(f"{base}/reset", timeout=1).ok, 15, "the healthy receiver")
        _healthy(base, 5, rate, "warmup")  # workers up, connections open
        scenarios = [("baseline", None, 0)] + [(m, m, n) for m in ("blackhole", "slow") for n in backlogs]
        for index, (name, mode, backlog) in enumerate(scenarios):
            connections = None
            if mode:
                connections = ctx.Value("i", 0)
                bad_port = free_port()
                server = ctx.Process(target=serve_bad, args=(bad_port, mode, connections), daemon=True)
                server.start()
                bad_servers.append(server)
                bad_url = f"http://127.0.0.1:{bad_port}/hook"
                _wait(lambda p=bad_port: _listening(p), 15, f"the {mode} server")
                time.sleep(0.2)
                connections.value = 0  # not the bench's own probe
                _backlog(bad_url, backlog, f"bad{index}")
                from webhooks.delivery import kick

                kick()
                # The backlog is being worked on: its requests are out and hanging.
                _wait(lambda: Delivery.objects.filter(status=Delivery.IN_FLIGHT).exists(), 30, "the backlog to start")
                time.sleep(1.0)
            latencies = _healthy(base, healthy_n, rate, f"healthy{index}")
            row = {"scenario": f"{name} ({backlog:,} pending)" if mode else name,
                   "p50": _percentile(latencies, 0.5), "p99": _percentile(latencies, 0.99)}
            if mode:
                destination = f"http://127.0.0.1:{bad_port}"
                # Stop the backlog, then let the requests still out end: they opened
                # connections but are not recorded as attempts yet.
                Delivery.objects.filter(destination=destination, status=Delivery.PENDING).update(status=Delivery.DEAD)
                _wait(lambda d=destination: not Delivery.objects.filter(destination=d, status=Delivery.IN_FLIGHT).exists(),
                      60, "the bad destination's requests to end")
                row["connections"] = connections.value
                row["attempts"] = Attempt.objects.filter(delivery__destination=destination).count()
                row["breaker"] = Destination.objects.filter(destination=destination).values_list("state", flat=True).first()
                Delivery.objects.filter(destination=destination).delete()
            rows.append(row)
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=20)
        for server in bad_servers:
            server.terminate()
        receiver.terminate()
        connection.creation.destroy_test_db(test_db, verbosity=0)

    broker = "Redis" if settings.REDIS_URL else "ORM"
    baseline_p99 = rows[0]["p99"]
    print(f"database: {connection.vendor}, broker: {broker}; {healthy_n} healthy webhooks at {rate:g}/s per scenario; "
          f"timeout {settings.WEBHOOK_TIMEOUT:g} s, breaker after {settings.WEBHOOK_BREAKER_FAILURES} failures, "
          f"{settings.WEBHOOK_MAX_IN_FLIGHT_PER_DESTINATION} in flight per destination\n")
    print("| scenario | healthy p50 (ms) | healthy p99 (ms) | p99 / baseline | bad: connections / attempts | bad: breaker |")
    print("|---|---:|---:|---:|---:|---|")
    for row in rows:
        bad = f"{row['connections']:,} / {row['attempts']:,}" if "connections" in row else "-"
        print(f"| {row['scenario']} | {row['p50']:.1f} | {row['p99']:.1f} | {row['p99'] / baseline_p99:.2f} | "
              f"{bad} | {row.get('breaker') or '-'} |")
    worst = max(r["p99"] for r in rows[1:]) if len(rows) > 1 else baseline_p99
    duplicates = any(r["connections"] > r["attempts"] for r in rows if "connections" in r)
    print(f"\nisolation_worst_p99_ms={worst:.0f} baseline_p99_ms={baseline_p99:.0f} "
          f"ratio={worst / baseline_p99:.2f} duplicate_sends={'yes' if duplicates else 'no'}")


if __name__ == "__main__":
    main(sys.argv[1:])
