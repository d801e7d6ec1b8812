"""Load: many concurrent clients submitting executions against the real processes.

`python -m bench load [--clients=200] [--seconds=60] [--workers=3]`. Starts daphne,
a qcluster and the demo agent on a throwaway database beside DATABASE_URL's
(SQLite by default; PostgreSQL + Redis when DATABASE_URL and REDIS_URL say so).
Each client (asyncio + aiohttp, one keep-alive connection each) submits
`POST /api/v1/execute/async/analyzer.process` in a loop until the time is up; then
the bench waits until every accepted execution is terminal. It prints submit
latency p50/p99, submissions/s and completions/s, and fails when a 5xx was
answered or an accepted execution never finished.
"""

import asyncio
import statistics
import sys
import time
from collections import Counter

import aiohttp

from bench.environment import parse_options


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


async def _client(session: aiohttp.ClientSession, url: str, until: float, n: int, out: dict) -> None:
    i = 0
    while time.monotonic() < until:
        i += 1
        body = {"input": {"document": f"load client {n} request {i}"}}
        started = time.perf_counter()
        try:
            async with session.post(url, json=body) as response:
                doc = await response.json(content_type=None)
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            out["errors"][type(exc).__name__] += 1
            continue
        out["latency_ms"].append((time.perf_counter() - started) * 1000)
        out["statuses"][status] += 1
        if status == 202:
            out["accepted"].append(doc["execution_id"])


async def _load(base: str, clients: int, seconds: float) -> dict:
    out = {"latency_ms": [], "statuses": Counter(), "errors": Counter(), "accepted": []}
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        url = f"{base}/api/v1/execute/async/analyzer.process"
        started = time.monotonic()
        await asyncio.gather(*(_client(session, url, started + seconds, n, out) for n in range(clients)))
        out["elapsed"] = time.monotonic() - started
    return out


def _wait_terminal(accepted: set[str], timeout: float) -> tuple[int, float]:
    """Seconds until no accepted execution is unfinished; returns (unfinished, waited)."""
    from executions.models import TERMINAL, Execution

    started = time.monotonic()
    while True:
        unfinished = Execution.objects.filter(pk__in=accepted).exclude(status__in=TERMINAL).count()
        missing = len(accepted) - Execution.objects.filter(pk__in=accepted).count()
        waited = time.monotonic() - started
        if unfinished + missing == 0 or waited > timeout:
            return unfinished + missing, waited
        time.sleep(0.5)


def main(argv: list[str]) -> None:
    options = parse_options(argv)
    clients = int(options.get("clients", 200))
    seconds = float(options.get("seconds", 60))
    workers = options.get("workers", "3")

    from soak.standalone import throwaway_database

    with throwaway_database("load") as env:
        import requests
        from django.conf import settings
        from django.db import connection

        from devtools.waiting import wait_for
        from executions.models import Execution

        env.env.update({"Q_WORKERS": workers, "LOG_LEVEL": "WARNING"})
        web = env.daphne()
        env.worker()
        agent = env.demo_agent(web.url)
        wait_for(lambda: requests.get(f"{web.url}/api/v1/nodes/analyzer", timeout=2).ok, timeout=30,
                 what=f"the demo agent to register\n{agent.log()}")
        out = asyncio.run(_load(web.url, clients, seconds))
        accepted = set(out["accepted"])
        unfinished, waited = _wait_terminal(accepted, timeout=600)
        statuses = Counter(Execution.objects.filter(pk__in=accepted).values_list("status", flat=True))
        first = Execution.objects.filter(pk__in=accepted).order_by("created_at").values_list("created_at", flat=True).first()
        last = Execution.objects.filter(pk__in=accepted).order_by("-completed_at").values_list("completed_at", flat=True).first()
        vendor, broker = connection.vendor, "Redis" if settings.REDIS_URL else "ORM"
        limit = settings.MAX_CONCURRENT_REQUESTS

    server_errors = sum(n for status, n in out["statuses"].items() if status >= 500)
    latencies = out["latency_ms"]
    span = (last - first).total_seconds() if first and last else float("nan")
    print(f"database: {vendor}, broker: {broker}; {clients} clients for {seconds:g}s, "
          f"{workers} qcluster workers, one daphne (MAX_CONCURRENT_REQUESTS={limit}), one demo agent\n")
    print("| measure | value |")
    print("|---|---:|")
    print(f"| submissions answered | {len(latencies):,} |")
    print(f"| accepted (202) | {len(accepted):,} |")
    print(f"| answers by status | {', '.join(f'{k}: {v}' for k, v in sorted(out['statuses'].items()))} |")
    print(f"| 5xx | {server_errors} |")
    print(f"| connection errors | {sum(out['errors'].values())} {dict(out['errors']) or ''} |")
    print(f"| submit latency p50 (ms) | {_percentile(latencies, 0.5):.0f} |")
    print(f"| submit latency p99 (ms) | {_percentile(latencies, 0.99):.0f} |")
    print(f"| submit latency mean (ms) | {statistics.fmean(latencies) if latencies else float('nan'):.0f} |")
    print(f"| submissions/s | {len(latencies) / out['elapsed']:.1f} |")
    print(f"| executions finished/s (first created → last completed: {span:.0f}s) | {len(accepted) / span:.1f} |")
    print(f"| drained after the load stopped (s) | {waited:.0f} |")
    print(f"| terminal statuses | {', '.join(f'{k}: {v}' for k, v in sorted(statuses.items()))} |")
    print(f"| lost (accepted, never terminal) | **{unfinished}** |")
    if server_errors or unfinished or out["errors"]:
        raise SystemExit(f"load: {server_errors} 5xx, {unfinished} executions lost, errors {dict(out['errors'])}")


if __name__ == "__main__":
    main(sys.argv[1:])
