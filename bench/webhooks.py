"""Webhook delivery: engine throughput vs a bare sender, and completion latency.

`python -m bench webhooks [--n=N] [--repeat=R] [--latency-n=M] [--in-flight=64]`. Runs on the
database that DATABASE_URL names (SQLite by default), in a throwaway database
created beside it the way the tests do. The receiver is a separate process
(`devtools.loopback`, aiohttp, keep-alive) that checks `X-AgentField-Signature`
and records when each delivery arrived.

- engine: a real delivery cluster (`manage.py worker deliveries`) with 1 and with 2
  sending slots, warmed up; N completion deliveries become due at once and one
  wake-up goes out, as after a commit; the senders claim, sign, send and write
  every attempt and outcome event: signed, persisted deliveries per second, from
  the moment they are due to the last outcome written. Next to it, a bare asyncio
  sender (one aiohttp session, 64 requests in flight) posting the same bodies to
  the same receiver (no database, no signing): the ratio is what the durable path
  costs.
- latency: M executions finishing one after another (`enqueue_completion` in a
  transaction, as the executions app does) with real workers (`manage.py worker`)
  taking the on-commit wake-up: finished -> received, p50 and p99.
Figures are medians of R runs; the last line is the one figure to track:
`webhooks_per_s=<engine, 2 processes> bare_aiohttp_per_s=<bare> ratio=<engine/bare>`.
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.environment import parse_options, setup_django
from devtools.loopback import LoopbackProcess
from devtools.processes import database_url
from devtools.waiting import wait_for

SECRET = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
ROOT = Path(__file__).resolve().parent.parent


def _payload(execution_id: str) -> dict:
    return {
        "event": "execution.completed", "execution_id": execution_id, "workflow_id": "run_bench",
        "run_id": "run_bench", "agent_node_id": "analyzer", "reasoner_id": "process", "status": "succeeded",
        "target": "analyzer.process", "type": "reasoner", "duration_ms": 12,
        "result": {"summary": "Document processed successfully", "score": 0.93},
        "timestamp": "2026-03-23T10:00:00Z",
    }


def _bare_sender(url: str, bodies: list[bytes], in_flight: int) -> float:
    """Requests/s of a bare asyncio sender: one aiohttp session, `in_flight` at once, no database, no signing."""
    import asyncio

    import aiohttp

    async def run() -> float:
        queue = list(reversed(bodies))
        statuses: list[int] = []
        headers = {"Content-Type": "application/json"}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

            async def lane() -> None:
                while queue:
                    body = queue.pop()
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                        statuses.append(response.status)

            async def warm() -> None:  # open the connections first, as the engine's are
                async with session.post(url, data=bodies[0], headers=headers) as response:
                    await response.read()

            await asyncio.gather(*(warm() for _ in range(in_flight)))
            started = time.perf_counter()
            await asyncio.gather(*(lane() for _ in range(in_flight)))
            elapsed = time.perf_counter() - started
        assert all(s == 200 for s in statuses) and len(statuses) == len(bodies)
        return len(bodies) / elapsed

    return asyncio.run(run())


def _start_cluster(senders: int, log_path: Path) -> subprocess.Popen:
    """`manage.py worker deliveries` with `senders` slots for sending (and one for the sweeper)."""
    env = {**os.environ, "DATABASE_URL": database_url(), "TEST_DB_NAME": "", "PYTHONUNBUFFERED": "1",
           # No collector is configured, so the forwarder holds no slot; the sweeper holds one.
           "Q_DELIVERY_WORKERS": str(senders + 1)}
    return subprocess.Popen([sys.executable, "manage.py", "worker", "deliveries"], cwd=ROOT, env=env,
                            stdout=log_path.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)


def _queue(url: str, tag: str, count: int) -> None:
    """`count` completion deliveries to `url`, not due yet (no tick may start them before the clock does)."""
    from datetime import timedelta

    from django.utils import timezone

    from agentfield_site.lib.outbound import destination_of, encode_body
    from webhooks.models import Delivery

    later = timezone.now() + timedelta(days=1)
    rows = [
        Delivery(kind=Delivery.Kind.COMPLETION, event_type="execution.completed", execution_id=f"exec_{tag}_{i}",
                 url=url, destination=destination_of(url), secret=SECRET, body=encode_body(_payload(f"exec_{tag}_{i}")),
                 next_attempt_at=later)
        for i in range(count)
    ]
    for start in range(0, count, 1000):
        Delivery.objects.bulk_create(rows[start : start + 1000])


def _drain(tag: str, count: int, log_path: Path) -> float:
    """Make `tag`'s deliveries due, wake the cluster as a commit does, and return deliveries/s.

    From the moment they are due to the last one's outcome written (`delivered_at`).
    """
    from django.db.models import Max
    from django.utils import timezone

    from webhooks import delivery
    from webhooks.models import Attempt, Delivery

    mine = Delivery.objects.filter(execution_id__startswith=f"exec_{tag}_")
    started = timezone.now()
    mine.update(next_attempt_at=started)
    delivery.kick()
    try:
        # The queue's own index, not a scan of the run's rows: the bench must not weigh on what it measures.
        queued = Delivery.objects.filter(status__in=[Delivery.Status.PENDING, Delivery.Status.IN_FLIGHT])
        wait_for(lambda: not queued.exists(), timeout=300, interval=0.1, what=f"{count} deliveries")
    except TimeoutError as exc:
        raise SystemExit(f"engine run: {exc}\n{log_path.read_text()[-3000:]}") from None
    delivered = mine.filter(status=Delivery.Status.DELIVERED).count()
    attempts = Attempt.objects.filter(delivery__in=mine).count()
    if delivered != count or attempts != count:
        raise SystemExit(f"engine run: {delivered} delivered, {attempts} attempts for {count} deliveries")
    finished = mine.aggregate(last=Max("delivered_at"))["last"]
    return count / (finished - started).total_seconds()


def _engine(url: str, total: int, run: int, senders: int, tmp: Path) -> float:
    """Signed, persisted deliveries/s of a real delivery cluster with `senders` sending slots.

    The cluster starts and sends a warm-up batch first (its processes have Django
    loaded and connections open, as a running deployment's have); then `total`
    deliveries become due at once and one wake-up goes out, as after a commit.
    The first sender wakes a second while the backlog lasts (`delivery.send_due`).
    """
    from webhooks.models import Delivery

    Delivery.objects.all().delete()
    log_path = tmp / f"bench-deliveries-{senders}.log"
    cluster = _start_cluster(senders, log_path)
    try:
        _queue(url, f"warm{run}s{senders}", 500)
        _drain(f"warm{run}s{senders}", 500, log_path)
        _queue(url, f"run{run}s{senders}", total)
        return _drain(f"run{run}s{senders}", total, log_path)
    finally:
        # Nothing here is worth a graceful stop (the sweeper's task runs for SWEEP_RUN_SECONDS).
        os.killpg(cluster.pid, 9)
        cluster.wait(timeout=20)


def _latency(receiver: LoopbackProcess, count: int, tmp: Path) -> list[float]:
    """Finished -> received, in ms, through a real worker and the on-commit wake-up."""
    from django.db import transaction

    from webhooks.completion import enqueue_completion

    env = {**os.environ, "DATABASE_URL": database_url(), "TEST_DB_NAME": "", "Q_WORKERS": "2", "Q_DELIVERY_WORKERS": "3",
           "PYTHONUNBUFFERED": "1", "SWEEP_TICK_SECONDS": "0.5"}
    log_path = tmp / "bench-qcluster.log"
    worker = subprocess.Popen([sys.executable, "manage.py", "worker"], cwd=ROOT, env=env,
                              stdout=log_path.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    finished: dict[str, float] = {}
    try:
        receiver.reset()
        warmup = 5
        for i in range(count + warmup):
            execution_id = f"exec_latency_{i}"
            finished[execution_id] = time.time()
            with transaction.atomic():
                enqueue_completion(execution_id=execution_id, url=receiver.url, secret=SECRET, headers={},
                                   payload=_payload(execution_id))
            try:
                wait_for(lambda n=i + 1: receiver.stats()["distinct"] >= n, timeout=60 if i < warmup else 10,
                         interval=0.005, what=f"delivery {i}")
            except TimeoutError as exc:
                raise SystemExit(f"latency run: {exc}\n{log_path.read_text()[-3000:]}") from None
            time.sleep(0.05)
        arrived = receiver.stats(times=1)["arrived"]
    finally:
        # A bench worker has nothing worth a graceful stop (its sweeper task runs for a minute).
        os.killpg(worker.pid, 9)
        worker.wait(timeout=20)
    return [(arrived[e] - finished[e]) * 1000 for e in list(finished)[warmup:]]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main(argv: list[str]) -> None:
    options = parse_options(argv)
    total = int(options.get("n", 3000))
    repeat = int(options.get("repeat", 3))
    latency_n = int(options.get("latency-n", 100))

    in_flight = int(options.get("in-flight", 64))
    # The engine gets the same concurrency as the bare sender: the ratio is then the
    # cost of the durable path, not of a different window.
    os.environ["WEBHOOK_MAX_IN_FLIGHT_PER_DESTINATION"] = str(in_flight)
    receiver = LoopbackProcess(secret=SECRET).start()
    setup_django("webhooks")

    from django.conf import settings
    from django.db import connection

    test_db = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        from agentfield_site.lib.outbound import encode_body

        bodies = [encode_body(_payload(f"bare_{i}")) for i in range(total)]
        bare, engine = [], {1: [], 2: []}
        with tempfile.TemporaryDirectory() as tmp:
            for run in range(repeat):
                bare.append(_bare_sender(receiver.url, bodies, in_flight))
                for senders in engine:
                    engine[senders].append(_engine(receiver.url, total, run, senders, Path(tmp)))
            stats = receiver.stats()
            if stats["bad_signatures"]:
                raise SystemExit(f"bad signatures at the receiver: {stats}")
            latencies = _latency(receiver, latency_n, Path(tmp))
    finally:
        connection.creation.destroy_test_db(test_db, verbosity=0)
        receiver.stop()

    broker = "Redis" if settings.REDIS_URL else "ORM"
    bare_rate = statistics.median(bare)
    one, two = statistics.median(engine[1]), statistics.median(engine[2])
    print(f"database: {connection.vendor}, broker: {broker}; {total} deliveries per run, median of {repeat} runs; "
          f"engine: {settings.WEBHOOK_MAX_IN_FLIGHT_PER_DESTINATION} in flight to the one destination, "
          f"claims of {settings.WEBHOOK_BATCH_SIZE}; bare aiohttp sender: {in_flight} in flight\n")
    print("| measure | value |")
    print("|---|---:|")
    print(f"| engine, 1 sending worker: signed, persisted deliveries/s | {one:,.0f} |")
    print(f"| engine, 2 sending workers (`worker deliveries`, 2 slots) | {two:,.0f} |")
    print(f"| bare asyncio sender (aiohttp, 1 process, no database), requests/s | {bare_rate:,.0f} |")
    print(f"| engine (1 worker) / bare | {one / bare_rate:.2f} |")
    print(f"| engine (2 workers) / bare | {two / bare_rate:.2f} |")
    print(f"| finished → received p50 (ms, {len(latencies)} executions, qcluster worker) | {_percentile(latencies, 0.5):.1f} |")
    print(f"| finished → received p99 (ms) | {_percentile(latencies, 0.99):.1f} |")
    print(f"\nwebhooks_per_s={two:.0f} bare_aiohttp_per_s={bare_rate:.0f} ratio={two / bare_rate:.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
