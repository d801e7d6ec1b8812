"""Delivery isolation: a healthy receiver's latency while another destination is dead or slow.

`python -m bench isolation [--healthy=100] [--rate=20] [--backlogs=300,5000] [--hung=100]`. Real workers
(`manage.py worker`, default settings: 10 s timeout, breaker after 5 failures,
32 in flight per destination) on a throwaway database beside DATABASE_URL's.
For each scenario, a backlog of completion webhooks is put in front of the
workers for one bad destination, then `--healthy` executions finish one after
another (`enqueue_completion` in a transaction, as the executions app does) with
webhooks to a healthy receiver: finished -> received, p50 and p99.

- baseline: no backlog;
- blackhole: the backlog goes to a server that accepts connections and never answers;
- slow: the backlog goes to a server that answers 200 after 9 s.

Targets: healthy p99 under 1 s and under 3x the baseline p99; the bad destination
is sent to (blackhole: connections opened; slow: requests received) no more often
than attempts were recorded for it (no duplicate sends).

Then the same for agent calls: `--healthy` executions submitted at `--rate` to a
healthy agent, submitted -> succeeded p50 and p99, first alone, then with `--hung`
executions submitted first to an agent that accepts connections and never
answers (a hung process): the calls it gets at once (at most
AGENT_MAX_CALLS_PER_NODE) and the healthy executions' latency beside them.
"""

import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.environment import parse_options, setup_django
from bench.webhooks import ROOT, SECRET, _payload, _percentile
from devtools.loopback import Blackhole, LoopbackProcess, Reply
from devtools.processes import database_url, free_port
from devtools.waiting import wait_for


def _blackhole(port: int, counter) -> None:
    Blackhole(port, counter).serve_forever()


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _backlog(url: str, count: int, tag: str) -> None:
    from agentfield_site.lib.outbound import destination_of, encode_body
    from webhooks.models import Delivery

    destination = destination_of(url)
    for start in range(0, count, 1000):
        Delivery.objects.bulk_create(
            Delivery(
                kind=Delivery.Kind.COMPLETION, event_type="execution.completed", execution_id=f"{tag}_{i}",
                url=url, destination=destination, secret=SECRET, body=encode_body(_payload(f"{tag}_{i}")),
            )
            for i in range(start, min(count, start + 1000))
        )


def _healthy(receiver: LoopbackProcess, count: int, rate: float, tag: str) -> list[float]:
    """Finished -> received (ms) for `count` executions finishing at `rate` per second."""
    from django.db import transaction

    from webhooks.completion import enqueue_completion

    finished: dict[str, float] = {}
    for i in range(count):
        execution_id = f"{tag}_{i}"
        finished[execution_id] = time.time()
        with transaction.atomic():
            enqueue_completion(execution_id=execution_id, url=receiver.url, secret=SECRET, headers={},
                               payload=_payload(execution_id))
        time.sleep(1 / rate)
    try:
        arrived = wait_for(lambda: (a := receiver.stats(times=1)["arrived"]).keys() >= finished.keys() and a,
                           timeout=60, interval=0.1, what=f"every healthy webhook in scenario {tag}")
    except TimeoutError as exc:
        raise SystemExit(str(exc)) from None
    return [(arrived[e] - finished[e]) * 1000 for e in finished]


def _executions(node: str, count: int, rate: float) -> list[str]:
    """Submit `count` executions to `node`'s reasoner at `rate` per second (as the API does); their ids."""
    from executions import submission

    ids = []
    for i in range(count):
        execution, _ = submission.submit(submission.Request(target=f"{node}.process", input={"i": i}))
        ids.append(execution.id)
        time.sleep(1 / rate)
    return ids


def _succeeded_after(ids: list[str], tag: str) -> list[float]:
    """Submitted -> succeeded (ms) of each of `ids`, once every one has."""
    from executions.models import Execution

    rows = Execution.objects.filter(pk__in=ids)
    try:
        wait_for(lambda: rows.filter(status="succeeded").count() == len(ids), timeout=120, interval=0.1,
                 what=f"every healthy execution in {tag}")
    except TimeoutError as exc:
        raise SystemExit(str(exc)) from None
    return [(done - created).total_seconds() * 1000 for created, done in rows.values_list("created_at", "completed_at")]


def _agent_calls(ctx, healthy_n: int, rate: float, hung_n: int) -> list[dict]:
    """The agent-call scenarios: healthy latency alone, then beside a hung agent's backlog."""
    from executions import nodes

    healthy = LoopbackProcess(path="", default=Reply(200, body={"ok": True})).start()
    connections = ctx.Value("i", 0)
    hung_port = free_port()
    hung = ctx.Process(target=_blackhole, args=(hung_port, connections), daemon=True)
    hung.start()
    try:
        wait_for(lambda: _listening(hung_port), timeout=15, interval=0.1, what="the hung agent")
        time.sleep(0.2)
        connections.value = 0  # not the bench's own probe
        nodes.register({"id": "healthy", "base_url": healthy.base, "reasoners": [{"id": "process"}]})
        nodes.register({"id": "hung", "base_url": f"http://127.0.0.1:{hung_port}", "reasoners": [{"id": "process"}]})
        _succeeded_after(_executions("healthy", 5, rate), "the warm-up")
        rows = []
        for name, backlog in (("baseline", 0), ("hung agent", hung_n)):
            if backlog:
                _executions("hung", backlog, 1000)
                wait_for(lambda: connections.value >= 1, timeout=30, what="the hung agent's first calls")
                time.sleep(1.0)
            latencies = _succeeded_after(_executions("healthy", healthy_n, rate), name)
            row = {"scenario": f"{name} ({backlog:,} executions waiting on it)" if backlog else name,
                   "p50": _percentile(latencies, 0.5), "p99": _percentile(latencies, 0.99)}
            if backlog:
                row["calls"] = connections.value
            rows.append(row)
        return rows
    finally:
        hung.terminate()
        healthy.stop()


def main(argv: list[str]) -> None:
    options = parse_options(argv)
    healthy_n = int(options.get("healthy", 100))
    rate = float(options.get("rate", 20))
    backlogs = [int(n) for n in options.get("backlogs", "300,5000").split(",")]
    hung_n = int(options.get("hung", 100))

    ctx = multiprocessing.get_context("spawn")
    receiver = LoopbackProcess(secret=SECRET).start()
    setup_django("isolation")

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
        _healthy(receiver, 5, rate, "warmup")  # workers up, connections open
        scenarios = [("baseline", None, 0)] + [(m, m, n) for m in ("blackhole", "slow") for n in backlogs]
        for index, (name, mode, backlog) in enumerate(scenarios):
            if mode == "blackhole":
                connections = ctx.Value("i", 0)
                bad_port = free_port()
                server = ctx.Process(target=_blackhole, args=(bad_port, connections), daemon=True)
                server.start()
                bad_servers.append(server)
                bad_url = f"http://127.0.0.1:{bad_port}/hook"
                wait_for(lambda p=bad_port: _listening(p), timeout=15, interval=0.1, what="the blackhole")
                time.sleep(0.2)
                connections.value = 0  # not the bench's own probe

                def sends(counter=connections) -> int:
                    return counter.value
            elif mode == "slow":
                slow = LoopbackProcess(default=Reply(200, delay=9)).start()
                bad_servers.append(slow.process)
                bad_url, bad_port = slow.url, slow.port

                def sends(server=slow) -> int:
                    return server.stats()["requests"]
            if mode:
                _backlog(bad_url, backlog, f"bad{index}")
                from webhooks.delivery import kick

                kick()
                # The backlog is being worked on: its requests are out and hanging.
                wait_for(lambda: Delivery.objects.filter(status=Delivery.Status.IN_FLIGHT).exists(), timeout=30,
                         what="the backlog to start")
                time.sleep(1.0)
            latencies = _healthy(receiver, healthy_n, rate, f"healthy{index}")
            row = {"scenario": f"{name} ({backlog:,} pending)" if mode else name,
                   "p50": _percentile(latencies, 0.5), "p99": _percentile(latencies, 0.99)}
            if mode:
                destination = f"http://127.0.0.1:{bad_port}"
                # Stop the backlog, then let the requests still out end: they opened
                # connections but are not recorded as attempts yet.
                Delivery.objects.filter(destination=destination, status=Delivery.Status.PENDING).update(status=Delivery.Status.DEAD)
                wait_for(lambda d=destination: not Delivery.objects.filter(destination=d, status=Delivery.Status.IN_FLIGHT).exists(),
                         timeout=60, what="the bad destination's requests to end")
                row["sends"] = sends()
                row["attempts"] = Attempt.objects.filter(delivery__destination=destination).count()
                row["breaker"] = Destination.objects.filter(destination=destination).values_list("state", flat=True).first()
                Delivery.objects.filter(destination=destination).delete()
            rows.append(row)
        # Last: the hung agent's calls hold their threads until the worker is killed.
        agent_rows = _agent_calls(ctx, healthy_n, rate, hung_n)
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=20)
        for server in bad_servers:
            server.terminate()
        receiver.stop()
        connection.creation.destroy_test_db(test_db, verbosity=0)

    broker = "Redis" if settings.REDIS_URL else "ORM"
    baseline_p99 = rows[0]["p99"]
    print(f"database: {connection.vendor}, broker: {broker}; {healthy_n} healthy webhooks at {rate:g}/s per scenario; "
          f"timeout {settings.WEBHOOK_TIMEOUT:g} s, breaker after {settings.WEBHOOK_BREAKER_FAILURES} failures, "
          f"{settings.WEBHOOK_MAX_IN_FLIGHT_PER_DESTINATION} in flight per destination\n")
    print("| scenario | healthy p50 (ms) | healthy p99 (ms) | p99 / baseline | bad: sends / attempts | bad: breaker |")
    print("|---|---:|---:|---:|---:|---|")
    for row in rows:
        bad = f"{row['sends']:,} / {row['attempts']:,}" if "sends" in row else "-"
        print(f"| {row['scenario']} | {row['p50']:.1f} | {row['p99']:.1f} | {row['p99'] / baseline_p99:.2f} | "
              f"{bad} | {row.get('breaker') or '-'} |")
    agent_baseline = agent_rows[0]["p99"]
    print(f"\nAgent calls: {healthy_n} healthy executions at {rate:g}/s per scenario, submitted -> succeeded; "
          f"AGENT_CALL_TIMEOUT {settings.AGENT_CALL_TIMEOUT:g} s, {settings.AGENT_MAX_CALLS_PER_NODE} calls per node, "
          f"{settings.Q_CLUSTER['workers']} dispatch workers x {settings.AGENT_CALLS_PER_WORKER} call threads\n")
    print("| scenario | healthy p50 (ms) | healthy p99 (ms) | p99 / baseline | hung agent: calls started |")
    print("|---|---:|---:|---:|---:|")
    for row in agent_rows:
        print(f"| {row['scenario']} | {row['p50']:.1f} | {row['p99']:.1f} | {row['p99'] / agent_baseline:.2f} | "
              f"{row.get('calls', '-')} |")
    worst = max(r["p99"] for r in rows[1:]) if len(rows) > 1 else baseline_p99
    duplicates = any(r["sends"] > r["attempts"] for r in rows if "sends" in r)
    print(f"\nisolation_worst_p99_ms={worst:.0f} baseline_p99_ms={baseline_p99:.0f} "
          f"ratio={worst / baseline_p99:.2f} duplicate_sends={'yes' if duplicates else 'no'}")


if __name__ == "__main__":
    main(sys.argv[1:])
