"""API capacity: the request paths agents and clients hit most, against Django's own floors.

`python -m bench api [--clients=32] [--seconds=6] [--rounds=3] [--nodes=1000] [--agents=1000] [--fleet-seconds=20]
[--only=submit,read,fleet,...]`.
Everything runs on a throwaway database beside DATABASE_URL's (SQLite by default;
PostgreSQL + Redis when DATABASE_URL and REDIS_URL say so), on real daphne
processes, driven by `--clients` concurrent keep-alive clients (asyncio + aiohttp)
for `--seconds` per path in all, split into `--rounds` that take every path in
turn (so a neighbour's load on this machine weighs on every row alike), after a
one-second warm-up:

- the floors, measured in the same run: a bare ASGI app under daphne, a minimal
  Django async view and a minimal Django sync view running `SELECT 1`, both with
  no middleware (`bench.floor`);
- this project on one web process: `/health`, a node heartbeat (agent key; the
  clients cycle through `--nodes` registered nodes, so each node beats about as
  often as a real fleet's would, not many times a second; before the row's
  warm-up every node beats once, as every node of a running fleet has), an async
  submit (client key) and an execution read (client key).

Then the fleet: `manage.py serve --web-processes 2` (the web tier only), `--agents`
simulated SDK agents heartbeating every 2 s while `--clients` clients submit and
read, each agent and each client on a keep-alive connection of its own (as an SDK
agent's client is), measured after a warm-up of two heartbeat periods (every agent
connects and beats twice; its calls get a row of their own, outside the p99); it reports the
API's p99, the 5xx, and whether the sweeper's liveness check (run with
NODE_OFFLINE_AFTER=6 s, three missed beats) would mark any node offline.

This process plays every client, with its cyclic garbage collector off while it
measures (one collection here would stall every call in flight at once, as no
real fleet's would), and prints how late its own event loop ran: every latency
includes that.

`--only` runs the rows (and `fleet`) it names and no others, to look at one
path (a profiler attached to its daphne, say); `read` brings `submit` along,
which makes what it reads. The targets need the full run.

Targets: heartbeat/s at least 0.5 x the minimal async view, submit/s at least
0.5 x the minimal sync view with `SELECT 1`; the fleet's p99 under 250 ms with no
5xx and every node online. The last line is
`heartbeat_per_s=<N> floor_async_per_s=<N> submit_per_s=<N> floor_sync_per_s=<N>`
(printed only when the four rows it is made of were measured: not a zero for a row `--only` left out).
"""

import asyncio
import contextlib
import gc
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from bench.environment import parse_options

# A request: method, path, JSON body (or None).
Call = tuple[str, str, bytes | None]


@dataclass
class Run:
    """What one path answered: latencies (ms), statuses and client-side errors."""

    latency_ms: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    bodies: list[dict] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def per_s(self) -> float:
        return len(self.latency_ms) / self.elapsed if self.elapsed else 0.0

    def pct(self, q: float) -> float:
        ordered = sorted(self.latency_ms)
        return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)

    def merge(self, other: "Run") -> None:
        self.latency_ms += other.latency_ms
        self.statuses.update(other.statuses)
        self.errors.update(other.errors)


async def _call(session: aiohttp.ClientSession, base: str, call: Call, headers: dict, out: Run, keep: bool) -> None:
    method, path, body = call
    started = time.perf_counter()
    try:
        async with session.request(method, base + path, data=body, headers=headers) as response:
            raw = await response.read()
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        out.errors[type(exc).__name__] += 1
        return
    out.latency_ms.append((time.perf_counter() - started) * 1000)
    out.statuses[status] += 1
    if keep and status < 300:
        out.bodies.append(json.loads(raw))


@contextlib.contextmanager
def _load_generator_gc_off():
    """No cyclic garbage collection in this process (the load generator) while it measures.

    One process plays every client, so one of its collections stalls every call in
    flight at once: in a fleet run it collected 139 times in 20 s (745 ms in all, one
    pass of 116 ms), each pause added to the latency of the 20 to 30 calls then out,
    none of it the server's. What is alive is frozen first, as timeit turns
    collection off while it times.
    """
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


async def _loop_lag(until: float, out: list[float]) -> None:
    """How late this process's event loop wakes a 10 ms timer, in ms, until `until`: part of every latency measured."""
    while time.monotonic() < until:
        asked = time.monotonic()
        await asyncio.sleep(0.01)
        out.append((time.monotonic() - asked - 0.01) * 1000)


async def _hammer(base: str, calls: Callable[[], Call], headers: dict, clients: int, seconds: float,
                  keep: bool = False) -> Run:
    """`clients` keep-alive connections, each sending one request after another for `seconds`."""
    out = Run()
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def client(until: float) -> None:
            while time.monotonic() < until:
                await _call(session, base, calls(), headers, out, keep)

        with _load_generator_gc_off():
            started = time.monotonic()
            await asyncio.gather(*(client(started + seconds) for _ in range(clients)))
            out.elapsed = time.monotonic() - started
    return out


async def _each_once(base: str, calls: list[Call], headers: dict, clients: int) -> None:
    """Send each call once, `clients` at a time."""
    queue = list(reversed(calls))
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def client() -> None:
            while queue:
                await _call(session, base, queue.pop(), headers, Run(), False)

        await asyncio.gather(*(client() for _ in range(clients)))


def _get(path: str) -> Callable[[], Call]:
    return lambda: ("GET", path, None)


def _cycle(make: Callable[[int], Call]) -> Callable[[], Call]:
    counter = itertools.count()
    return lambda: make(next(counter))


def _heartbeat(nodes: int) -> Callable[[], Call]:
    body = json.dumps({"status": "ready", "version": "1.0.0", "instance_id": "bench"}).encode()
    return _cycle(lambda i: ("POST", f"/api/v1/nodes/bench-{i % nodes}/heartbeat", body))


def _submit() -> Callable[[], Call]:
    return _cycle(lambda i: ("POST", "/api/v1/execute/async/bench-0.work",
                             json.dumps({"input": {"n": i}}).encode()))


def _read(execution_ids: list[str]) -> Callable[[], Call]:
    """Reads of the executions submitted so far (the list grows as the submit rows run)."""
    return _cycle(lambda i: ("GET", f"/api/v1/executions/{execution_ids[i % len(execution_ids)]}", None))


# --- The fleet: many agents beating every 2 s, clients submitting and reading ---------


# Before the measured window: two heartbeat periods, as in a fleet already running.
# In the first every agent opens its connection and beats once, so the web process
# it reached learns its node (a thousand connections and first beats at once); in
# the second the backlog of that burst drains, and the clients are running.
FLEET_WARM_UP = 4.0


async def _fleet(base: str, agents: int, clients: int, seconds: float, agent_key: str, client_key: str,
                 ) -> tuple[Run, Run, Run, list[float]]:
    beats, api, warm_up = Run(), Run(), Run()
    lag: list[float] = []
    agent_headers = {"X-API-Key": agent_key, "Content-Type": "application/json"}
    client_headers = {"X-API-Key": client_key, "Content-Type": "application/json"}
    body = json.dumps({"status": "ready", "version": "1.0.0"}).encode()
    accepted: list[str] = []
    async with contextlib.AsyncExitStack() as stack:
        # Every SDK agent holds its own keep-alive connection (the SDK's httpx client is
        # the agent's own), so its beats reach the web process it first connected to;
        # so does every client. One shared pool would hand each beat to whichever
        # connection is free, a different process each time.
        sessions = [
            await stack.enter_async_context(aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=1), timeout=aiohttp.ClientTimeout(total=60)))
            for _ in range(agents + clients)
        ]
        started = time.monotonic()
        measured = started + FLEET_WARM_UP
        until = measured + seconds

        def into(run: Run) -> Run:
            return run if time.monotonic() >= measured else warm_up

        async def agent(n: int) -> None:
            # Spread over the 2 s period, as agents started at different times are.
            next_beat = started + 2.0 * n / agents
            while next_beat < until:
                await asyncio.sleep(max(0.0, next_beat - time.monotonic()))
                await _call(sessions[n], base, ("POST", f"/api/v1/nodes/bench-{n}/heartbeat", body), agent_headers,
                            into(beats), False)
                next_beat += 2.0

        async def client(n: int) -> None:
            session = sessions[agents + n]
            for i in itertools.count():
                if time.monotonic() >= until:
                    return
                if i % 2 == 0 or not accepted:
                    run, out = Run(), into(api)
                    await _call(session, base, ("POST", "/api/v1/execute/async/bench-0.work",
                                                json.dumps({"input": {"client": n, "i": i}}).encode()),
                                client_headers, run, True)
                    accepted.extend(doc["execution_id"] for doc in run.bodies)
                    out.merge(run)
                else:
                    await _call(session, base, ("GET", f"/api/v1/executions/{accepted[-1 - (i % len(accepted))]}",
                                                None), client_headers, into(api), False)

        async def lag_after_warm_up() -> None:
            await asyncio.sleep(max(0.0, measured - time.monotonic()))
            await _loop_lag(until, lag)

        with _load_generator_gc_off():
            await asyncio.gather(lag_after_warm_up(), *(agent(n) for n in range(agents)),
                                 *(client(n) for n in range(clients)))
        beats.elapsed = api.elapsed = time.monotonic() - measured
        warm_up.elapsed = FLEET_WARM_UP
    return beats, api, warm_up, lag


def _serve_web_tier(env, processes: int):
    """`manage.py serve --web-processes N --no-worker --no-agent` on a free port; returns (proc, base)."""
    import requests

    from devtools.processes import free_port
    from devtools.waiting import wait_for

    port = free_port()
    serve = env.script("serve", ["manage.py", "serve", "--web-processes", str(processes), "--no-worker", "--no-agent"],
                       port, {"PORT": str(port)})
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: requests.get(f"{base}/health", timeout=1).ok, timeout=60, what=f"serve\n{serve.log()}")
    return serve, base


def _stop_serve(serve) -> None:
    if serve.popen.poll() is None:
        serve.popen.send_signal(signal.SIGTERM)
        try:
            serve.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            serve.kill()


def _row(name: str, run: Run, ratio: str = "") -> str:
    return (f"| {name} | {run.per_s:,.0f} | {run.pct(0.5):.0f} | {run.pct(0.99):.0f} | "
            f"{run.server_errors} | {sum(run.errors.values())} | {ratio} |")


def main(argv: list[str]) -> None:
    options = parse_options(argv)
    clients = int(options.get("clients", 32))
    seconds = float(options.get("seconds", 6))
    rounds = int(options.get("rounds", 3))
    nodes = int(options.get("nodes", 1000))
    agents = int(options.get("agents", 1000))
    fleet_seconds = float(options.get("fleet-seconds", 20))
    only = set(filter(None, options.get("only", "").split(",")))
    if "read" in only:
        only.add("submit")

    from soak.standalone import throwaway_database

    with throwaway_database("api") as env:
        import requests
        from django.conf import settings
        from django.db import connection
        from django.utils import timezone

        from agentfield_site.models import ApiKey
        from devtools.processes import free_port
        from devtools.waiting import wait_for
        from executions.models import AgentNode, Execution

        env.env.update({"LOG_LEVEL": "WARNING", "EXECUTION_QUEUE_LIMIT": "1000000"})
        agent_row, agent_key = ApiKey.create("bench-agent", ApiKey.Scope.AGENT)
        _, client_key = ApiKey.create("bench-client", ApiKey.Scope.CLIENT)
        now = timezone.now()
        AgentNode.objects.bulk_create(
            AgentNode(id=f"bench-{i}", base_url="http://127.0.0.1:9", reasoners=[{"id": "work"}], owner=agent_row,
                      health_status=AgentNode.Health.ACTIVE, lifecycle_status="ready", last_heartbeat=now)
            for i in range(max(nodes, agents))
        )
        vendor, broker = connection.vendor, "Redis" if settings.REDIS_URL else "ORM"
        agent_headers = {"X-API-Key": agent_key, "Content-Type": "application/json"}
        client_headers = {"X-API-Key": client_key, "Content-Type": "application/json"}

        def serve_app(app: str, path: str):
            port = free_port()
            proc = env.script(f"floor-{app}", ["-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                                               f"bench.floor_asgi:{app}"], port)
            wait_for(lambda: requests.get(f"{proc.url}{path}", timeout=1).ok, what=f"{app}\n{proc.log()}")
            return proc

        bare_server = serve_app("bare", "/")
        floor_server = serve_app("application", "/async")
        web = env.daphne()
        accepted: list[str] = []
        paths = {
            "bare": (bare_server.url, _get("/"), {}),
            "async": (floor_server.url, _get("/async"), {}),
            "sync": (floor_server.url, _get("/sync-select"), {}),
            "health": (web.url, _get("/health"), {}),
            "heartbeat": (web.url, _heartbeat(nodes), agent_headers),
            "submit": (web.url, _submit(), client_headers),
            "read": (web.url, _read(accepted), client_headers),
        }
        runs = {name: Run() for name in paths}
        selected = {name: path for name, path in paths.items() if not only or name in only}
        # Rounds, each path in turn: load from the neighbours on this machine changes
        # over a run, and it then weighs on every row alike.
        for round_ in range(rounds):
            for name, (base, calls, headers) in selected.items():
                if round_ == 0:
                    if name == "heartbeat":
                        # As in a running fleet, every node has beaten before: a node's first
                        # beat into a process is written at once, later ones are coalesced.
                        every_node = _heartbeat(nodes)
                        asyncio.run(_each_once(base, [every_node() for _ in range(nodes)], headers, clients))
                    asyncio.run(_hammer(base, calls, headers, clients, 1.0, keep=name == "submit"))
                run = asyncio.run(_hammer(base, calls, headers, clients, seconds / rounds, keep=name == "submit"))
                accepted.extend(doc["execution_id"] for doc in run.bodies)
                runs[name].merge(run)
                runs[name].elapsed += run.elapsed
            # No worker runs here: stand in for one, so the queue submits count stays short.
            Execution.objects.filter(status="queued").update(status="cancelled")
        for proc in (web, floor_server, bare_server):
            proc.stop()
        bare, floor_async, floor_sync = runs["bare"], runs["async"], runs["sync"]
        heartbeat, submit = runs["heartbeat"], runs["submit"]
        rows = [("bare ASGI app under daphne (the server's limit)", bare),
                ("minimal Django async view, no middleware", floor_async),
                ("minimal Django sync view, `SELECT 1`, no middleware", floor_sync),
                ("this project's `/health`", runs["health"]),
                ("node heartbeat (`POST /api/v1/nodes/{id}/heartbeat`)", heartbeat),
                ("async submit (`POST /api/v1/execute/async/...`)", submit),
                ("execution read (`GET /api/v1/executions/{id}`)", runs["read"])]

        fleet = None
        if agents and (not only or "fleet" in only):
            from executions import nodes as node_registry

            AgentNode.objects.update(last_heartbeat=timezone.now())
            if vendor == "postgresql":
                # As pgbench does before each run: the rows above left thousands of
                # dead and new rows, which autovacuum would otherwise clean up during
                # the fleet, on a running system long before.
                with connection.cursor() as cursor:
                    cursor.execute("VACUUM ANALYZE")
            serve, base = _serve_web_tier(env, 2)
            try:
                beats, api, warm_up, lag = asyncio.run(_fleet(base, agents, clients, fleet_seconds, agent_key, client_key))
            finally:
                _stop_serve(serve)
            settings.NODE_OFFLINE_AFTER = 6.0
            would_go_offline = AgentNode.objects.filter(
                pk__in=[f"bench-{n}" for n in range(agents)], health_status=AgentNode.Health.ACTIVE,
                last_heartbeat__lt=timezone.now() - node_registry.offline_cutoff_delta(),
            ).count()
            fleet = (beats, api, warm_up, lag, would_go_offline)

    print(f"database: {vendor}, broker: {broker}; {clients} concurrent keep-alive clients, {seconds:g} s per row "
          f"in {rounds} rounds after a 1 s warm-up; one web process (MAX_CONCURRENT_REQUESTS={settings.MAX_CONCURRENT_REQUESTS}); "
          f"heartbeats cycle through {nodes:,} nodes; {os.cpu_count()} cores\n")
    print("| path | req/s | p50 (ms) | p99 (ms) | 5xx | errors | ratio |")
    print("|---|---:|---:|---:|---:|---:|---|")
    heartbeat_ratio = heartbeat.per_s / floor_async.per_s if floor_async.per_s else float("nan")
    submit_ratio = submit.per_s / floor_sync.per_s if floor_sync.per_s else float("nan")
    for name, run in rows:
        if not run.latency_ms:
            continue  # not in --only
        ratio = ""
        if run is heartbeat:
            ratio = f"{heartbeat_ratio:.2f} x async floor (target 0.5)"
        elif run is submit:
            ratio = f"{submit_ratio:.2f} x sync floor (target 0.5)"
        print(_row(name, run, ratio))
    if fleet is not None:
        beats, api, warm_up, lag, offline = fleet
        print(f"\nfleet: `serve --web-processes 2`, {agents:,} agents heartbeating every 2 s and {clients} clients "
              f"submitting and reading for {fleet_seconds:g} s, after {FLEET_WARM_UP:g} s in which every agent "
              f"connects and beats twice\n")
        print("| traffic | req/s | p50 (ms) | p99 (ms) | 5xx | errors | |")
        print("|---|---:|---:|---:|---:|---:|---|")
        both = Run(elapsed=beats.elapsed)
        both.merge(beats)
        both.merge(api)
        print(_row("heartbeats", beats))
        print(_row("submits and reads", api))
        print(_row("all API calls (target p99 < 250 ms, no 5xx)", both))
        print(_row(f"warm-up, the first {FLEET_WARM_UP:g} s (all calls; not in the rows above)", warm_up))
        late = Run(latency_ms=lag)
        print(f"\nthe load generator's own event loop (one process plays every agent and client), late to wake: "
              f"p50 {late.pct(0.5):.1f} ms, p99 {late.pct(0.99):.1f} ms, at most {max(lag, default=0):.0f} ms; "
              f"every latency above includes it")
        print(f"\nnodes the liveness check would mark offline after the run: **{offline}** of {agents:,}")
    if not all(run.latency_ms for run in (heartbeat, floor_async, submit, floor_sync)):
        print("\n(no summary line: --only left out a row it is made of)")
        return
    print(f"\nheartbeat_per_s={heartbeat.per_s:.0f} floor_async_per_s={floor_async.per_s:.0f} "
          f"submit_per_s={submit.per_s:.0f} floor_sync_per_s={floor_sync.per_s:.0f}")


if __name__ == "__main__":
    main(sys.argv[1:])
