"""Forwarder throughput: events per second from the log to a fast local collector.

`python -m bench forwarder [--events=N] [--repeat=R]`. Runs on the database that
DATABASE_URL names (SQLite by default), in a throwaway database created beside it
the way the tests do, so a real configuration and event log are never touched.
The collector is a separate process (`devtools.loopback`, aiohttp) that checks the signature of every
batch and counts event ids; a run passes only if every id arrived. The figure is
the median of R runs of N pre-written events through `runner.run()`.
"""

import statistics
import sys
import time

from bench.environment import parse_options, setup_django
from devtools.loopback import LoopbackProcess, Reply

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
CASES = [(10, 1), (10, 4), (10, 8), (100, 1), (100, 4)]  # (batch size, batches in flight)


def main(argv: list[str]) -> None:
    options = parse_options(argv)
    total = int(options.get("events", 20000))
    repeat = int(options.get("repeat", 3))

    collector = LoopbackProcess(path="/collect", secret=SECRET, default=Reply(204, body=b"")).start()
    setup_django("forwarder")

    from django.conf import settings
    from django.db import connection

    from observability import events
    from observability.forwarder import configuration, runner
    from observability.models import ForwarderDeadLetter, PlatformEvent

    # The bench drives the forwarder itself: no wake-ups into a real task queue.
    events.after_commit.clear()
    test_db = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        rows = []
        default_concurrency = settings.OBSERVABILITY_CONCURRENCY
        for batch_size, concurrency in CASES:
            settings.OBSERVABILITY_BATCH_SIZE = batch_size
            settings.OBSERVABILITY_CONCURRENCY = concurrency
            rates, requests_per_s, dropped = [], [], 0
            for _ in range(repeat):
                PlatformEvent.objects.all().delete()
                configuration.configure(
                    url=collector.url, secret=SECRET, headers={}, enabled=True, event_types=["*"]
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
                collector.reset()
                started = time.perf_counter()
                runner.run(seconds=600, linger=0)
                elapsed = time.perf_counter() - started
                stats = collector.stats(low=low, high=high)
                dropped += total - stats["present"]
                if stats["bad_signatures"] or stats["unsigned"] or ForwarderDeadLetter.objects.exists():
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
        collector.stop()

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
