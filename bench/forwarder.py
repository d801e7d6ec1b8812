"""Forwarder throughput: events per second from the log to a fast local collector.

`python -m bench forwarder [--events=N] [--repeat=R]`. Runs on the database that
DATABASE_URL names (SQLite by default), in a throwaway database created beside it
the way the tests do, so a real configuration and event log are never touched.
The collector is a separate process (aiohttp) that checks the signature of every
batch and counts event ids; a run passes only if every id arrived. The figure is
the median of R runs of N pre-written events through `forwarder.run()`.
"""

import multiprocessing
import os
import statistics
import sys
import time

from bench.environment import free_port, setup_django

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
CASES = [(10, 1), (10, 4), (10, 8), (100, 1), (100, 4)]  # (batch size, batches in flight)




def serve_collector(port: int) -> None:
    """The collector process: verify each batch's signature, record ids, answer 204."""
    import json

    from aiohttp import web

    sys.path.insert(0, os.getcwd())
    from agentfield_site.lib.signing import agentfield_signature

    ids: set[int] = set()
    counts = {"requests": 0, "events": 0, "bad_signatures": 0}

    async def collect(request: web.Request) -> web.Response:
        body = await request.read()
        counts["requests"] += 1
        if request.headers.get("X-AgentField-Signature") != agentfield_signature(body, SECRET):
            counts["bad_signatures"] += 1
        for event in json.loads(body)["events"]:
            ids.add(event["event_id"])
            counts["events"] += 1
        return web.Response(status=204)

    async def stats(request: web.Request) -> web.Response:
        low, high = int(request.query["low"]), int(request.query["high"])
        present = sum(1 for i in range(low, high + 1) if i in ids)
        return web.json_response({**counts, "present": present})

    async def reset(request: web.Request) -> web.Response:
        ids.clear()
        counts.update(requests=0, events=0, bad_signatures=0)
        return web.Response(status=204)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.add_routes(
        [web.post("/collect", collect), web.get("/stats", stats), web.post("/reset", reset)]
    )
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)




def _wait_up(url: str) -> None:
    import requests

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            requests.post(f"{url}/reset", timeout=1)
            return
        except requests.ConnectionError:
            time.sleep(0.1)
    raise SystemExit("the bench collector did not start")


def main(argv: list[str]) -> None:
    options = dict(a.lstrip("-").split("=", 1) for a in argv if "=" in a)
    total = int(options.get("events", 20000))
    repeat = int(options.get("repeat", 3))

    port = free_port()
    # Start the collector before Django opens connections: a forked child must not share them.
    collector = multiprocessing.get_context("spawn").Process(
        target=serve_collector, args=(port,), daemon=True
    )
    collector.start()
    url = f"http://127.0.0.1:{port}"
    setup_django("forwarder")

    import requests
    from django.conf import settings
    from django.db import connection

    from observability import events, forwarder
    from observability.models import ForwarderDeadLetter, PlatformEvent

    # The bench drives the forwarder itself: no wake-ups into a real task queue.
    events.after_commit.clear()
    test_db = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        _wait_up(url)
        rows = []
        default_concurrency = settings.OBSERVABILITY_CONCURRENCY
        for batch_size, concurrency in CASES:
            settings.OBSERVABILITY_BATCH_SIZE = batch_size
            settings.OBSERVABILITY_CONCURRENCY = concurrency
            rates, requests_per_s, dropped = [], [], 0
            for _ in range(repeat):
                PlatformEvent.objects.all().delete()
                forwarder.configure(
                    url=f"{url}/collect", secret=SECRET, headers={}, enabled=True, event_types=["*"]
                )
                saved = []
                for start in range(0, total, 2000):
                    saved += events.publish_many(
                        events.build(
                            "execution.log",
                            execution_id=f"exec_{i}",
                            data={"i": i, "message": "x" * 64},
                        )
                        for i in range(start, min(total, start + 2000))
                    )
                low, high = saved[0].id, saved[-1].id
                requests.post(f"{url}/reset", timeout=5)
                started = time.perf_counter()
                forwarder.run(seconds=600, linger=0)
                elapsed = time.perf_counter() - started
                stats = requests.get(
                    f"{url}/stats", params={"low": low, "high": high}, timeout=30
                ).json()
                dropped += total - stats["present"]
                if stats["bad_signatures"] or ForwarderDeadLetter.objects.exists():
                    raise SystemExit(
                        f"bench run failed: {stats}, dead letters: {ForwarderDeadLetter.objects.count()}"
                    )
                rates.append(total / elapsed)
                requests_per_s.append(stats["requests"] / elapsed)
            rows.append(
                (
                    batch_size,
                    concurrency,
                    statistics.median(rates),
                    statistics.median(requests_per_s),
                    dropped,
                )
            )
    finally:
        connection.creation.destroy_test_db(test_db, verbosity=0)
        collector.terminate()

    print(
        f"database: {connection.vendor}; {total} events per run, median of {repeat} runs; signed batches\n"
    )
    print("| batch size | batches in flight | events/s | requests/s | dropped |")
    print("|---:|---:|---:|---:|---:|")
    for batch_size, concurrency, rate, rps, dropped in rows:
        print(f"| {batch_size} | {concurrency} | {rate:,.0f} | {rps:,.0f} | {dropped} |")
    print(
        f"\nTarget: 5,000 events/s. Default: batch size 10, {default_concurrency} in flight."
    )


if __name__ == "__main__":
    main(sys.argv[1:])
