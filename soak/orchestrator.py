"""The soak: executions at volume through real processes while things break, then the books balance.

One orchestrator (this module, on one asyncio loop) drives real daphne, qcluster
and demo-agent processes (`devtools.processes.ProcessEnv`) and owns the
loopback ends (`devtools.loopback`): a webhook receiver that fails 30 % of requests at random and goes
down twice, an observability collector, SSE clients that hang up and resume with
`Last-Event-ID`. Meanwhile the worker is SIGKILLed twice and daphne restarted once
(with `web_processes` above 1, the web tier is `manage.py serve --web-processes N`
and one of its daphne processes is SIGKILLed instead: the others keep serving,
the supervisor starts it again).
When the submissions are in, it waits for everything to settle, redrives the dead
letter queue, and checks that nothing was lost: every execution terminal, every
completion webhook acknowledged by the receiver, every event id seen by every
SSE client and by the collector.
"""

import asyncio
import contextlib
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import requests
from django.db import connections

from devtools.loopback import LoopbackServer, Reply
from devtools.processes import Proc, ProcessEnv, children_of, free_port
from devtools.waiting import wait_for, wait_for_async
from soak.sse_clients import ReconnectingSseClient

WEBHOOK_SECRET = "whsec_c29hay1yZWNlaXZlci1zZWNyZXQtMzItYnl0ZXMhIQ=="
COLLECTOR_SECRET = "whsec_c29hay1jb2xsZWN0b3Itc2VjcmV0LTMyLWJ5dGVzIQ=="
OBS = "/api/v1/settings/observability-webhook"


@dataclass
class SoakConfig:
    """The size and the faults of one soak run; `ci()` is the short form."""

    executions: int = 5000
    # Submissions per second, paced so that the faults land mid-stream and the run
    # measures recovery rather than a backlog: below what the demo agent sustains here.
    rate: float = 5.0
    submitters: int = 16
    fail_rate: float = 0.3
    outage_seconds: float = 20.0
    sse_clients: int = 3
    sse_lifetime: tuple[float, float] = (2.0, 8.0)
    settle_timeout: float = 900.0
    seed: int = 6
    # 1: one daphne, restarted (SIGTERM, start) mid-run. More: `serve --web-processes N`
    # on one port, and one of its daphne processes SIGKILLed mid-run.
    web_processes: int = 1
    process_env: dict[str, str] = field(
        default_factory=lambda: {
            "WEBHOOK_RETRY_SCHEDULE": "0.5,1,2,4",
            "WEBHOOK_TIMEOUT": "2",
            "OBSERVABILITY_FLUSH_INTERVAL": "0.3",
            "OBSERVABILITY_LEASE_SECONDS": "3",
            "OBSERVABILITY_RETRY_SCHEDULE": "0.5,1",
            # Short, so that an execution whose result never arrives still ends
            # within the run (as `timeout`, firing its webhook): the table counts
            # every end other than `succeeded` as a lost result, and the run fails.
            "EXECUTION_TIMEOUT": "180",
        }
    )

    @classmethod
    def ci(cls) -> "SoakConfig":
        config = cls(executions=150, rate=3.0, submitters=8, outage_seconds=5.0, sse_lifetime=(1.0, 4.0),
                     settle_timeout=140.0)
        # A schedule shorter than the outage: deliveries that meet it are dead-lettered,
        # so the short form exercises the DLQ and the redrive too.
        config.process_env["WEBHOOK_RETRY_SCHEDULE"] = "0.2,0.4,0.8"
        config.process_env["EXECUTION_TIMEOUT"] = "90"
        return config


@dataclass
class SoakReport:
    """The figures of one run; `lost` must be 0."""

    executions: int = 0
    statuses: Counter = field(default_factory=Counter)
    deliveries: int = 0
    attempts: int = 0
    receiver_requests: int = 0
    injected_failures: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    redriven: int = 0
    dlq_after_redrive: int = -1
    lost_executions: int = 0
    lost_webhooks: int = 0
    lost_sse: int = 0
    lost_collector: int = 0
    events: int = 0
    sse_clients: int = 0
    sse_connections: int = 0
    sse_duplicates: int = 0
    collector_events: int = 0
    collector_duplicates: int = 0
    forwarder_dead_letters: int = 0
    bad_signatures: int = 0
    submit_retries: int = 0
    submit_5xx: int = 0
    faults: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)
    database: str = ""

    @property
    def lost(self) -> int:
        return self.lost_executions + self.lost_webhooks + self.lost_sse + self.lost_collector

    @property
    def unsucceeded(self) -> int:
        return sum(n for status, n in self.statuses.items() if status != "succeeded")

    def problems(self) -> list[str]:
        """Every broken invariant, in words (empty when the run passed)."""
        checks = {
            "an execution is not terminal or missing": self.lost_executions,
            # The demo agent succeeds every time: any other end means its result was lost.
            "an execution ended other than succeeded": self.unsucceeded,
            "a completion webhook never reached the receiver": self.lost_webhooks,
            "an SSE client missed an event id": self.lost_sse,
            "the collector missed an event id": self.lost_collector,
            "the webhook DLQ is not empty after the redrive": self.dlq_after_redrive != 0,
            "a delivery or batch arrived with a bad signature": self.bad_signatures,
            "a submit was answered with a 5xx": self.submit_5xx,
            "the collector's dead letter queue is not empty": self.forwarder_dead_letters,
        }
        return [f"{text} ({value})" for text, value in checks.items() if value]

    def table(self) -> str:
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(self.statuses.items()))
        rows = [
            ("executions (terminal: " + statuses + ")", self.executions),
            ("ended other than succeeded (agent result lost)", self.unsucceeded),
            ("completion deliveries", self.deliveries),
            ("attempts recorded", self.attempts),
            ("requests at the receiver (injected 500s)", f"{self.receiver_requests} ({self.injected_failures})"),
            ("duplicates (receiver, by webhook-id)", self.duplicates),
            ("dead-lettered", self.dead_lettered),
            ("redriven", self.redriven),
            ("DLQ after redrive", self.dlq_after_redrive),
            ("events in the log (execution + webhook)", self.events),
            ("SSE clients / connections / duplicate ids", f"{self.sse_clients} / {self.sse_connections} / {self.sse_duplicates}"),
            ("collector: events / re-sent / dead letters", f"{self.collector_events} / {self.collector_duplicates} / {self.forwarder_dead_letters}"),
            ("submit retries (connection refused / 5xx)", f"{self.submit_retries} ({self.submit_5xx} 5xx)"),
            ("bad signatures", self.bad_signatures),
            ("lost (executions + webhooks + SSE + collector)",
             f"**{self.lost}** ({self.lost_executions} + {self.lost_webhooks} + {self.lost_sse} + {self.lost_collector})"),
            ("wall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in self.phases.items()), f"{self.wall_seconds:.0f}"),
        ]
        lines = [f"database: {self.database}; faults: {'; '.join(self.faults)}", "", "| measure | value |", "|---|---:|"]
        lines += [f"| {name} | {value} |" for name, value in rows]
        if self.stuck:
            lines += ["", "not terminal (first 5): " + "; ".join(self.stuck)]
        return "\n".join(lines)


async def _db(fn: Callable[[], Any]) -> Any:
    """Run ORM work off the event loop, closing that thread's connection after."""

    def call() -> Any:
        try:
            return fn()
        finally:
            connections.close_all()

    return await asyncio.to_thread(call)


class Soak:
    """One run: start everything, submit with faults, settle, redrive, count."""

    def __init__(self, env: ProcessEnv, config: SoakConfig) -> None:
        self.env = env
        self.config = config
        self.report = SoakReport()
        # The receiver fails `fail_rate` of requests at random and de-duplicates on webhook-id;
        # the collector counts every forwarded event id. Both check every signature.
        self.receiver = LoopbackServer(path="/hook", secret=WEBHOOK_SECRET, fail_rate=config.fail_rate,
                                       seed=config.seed)
        self.collector = LoopbackServer(path="/collect", secret=COLLECTOR_SECRET, default=Reply(204, body=b""))
        self.accepted: dict[int, str] = {}
        self.submitted = 0
        self.web: Proc | None = None
        self.worker: Proc | None = None
        self.clients: list[ReconnectingSseClient] = []

    @property
    def base(self) -> str:
        return self.web.url

    # --- set-up -----------------------------------------------------------------
    async def _start(self, session: aiohttp.ClientSession) -> int:
        """Servers, processes, the forwarder configured; returns the event id the run starts after."""
        from observability.models import PlatformEvent

        self.env.env.update(self.config.process_env)
        await self.receiver.start()
        await self.collector.start()
        self.web = await asyncio.to_thread(self._start_web)
        async with session.post(f"{self.base}{OBS}", json={"url": self.collector.url, "secret": COLLECTOR_SECRET}) as r:
            assert r.status == 200, await r.text()
        baseline = await _db(lambda: PlatformEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0)
        self.worker = self.env.worker()
        agent = self.env.demo_agent(self.base)

        async def registered() -> bool:
            async with session.get(f"{self.base}/api/v1/nodes/analyzer") as r:
                return r.status == 200

        await wait_for_async(registered, 30, 0.5, f"the demo agent to register\n{agent.log()}")
        return baseline

    # --- load and faults ----------------------------------------------------------
    async def _submit(self, session: aiohttp.ClientSession, i: int) -> None:
        body = {
            "input": {"document": f"soak document {i} about reliability under faults"},
            "webhook": {"url": self.receiver.url, "secret": WEBHOOK_SECRET},
        }
        # A client that lost the answer (daphne restarting) asks again with the same
        # key: the contract's idempotency makes that the same execution, never a second.
        headers = {"Idempotency-Key": f"soak-{self.config.seed}-{i}"}
        deadline = time.monotonic() + 120
        while True:
            try:
                async with session.post(f"{self.base}/api/v1/execute/async/analyzer.process", json=body,
                                        headers=headers) as r:
                    status, doc = r.status, await r.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError):
                status, doc = None, None
            if status == 202:
                if not doc.get("webhook_registered"):
                    raise AssertionError(f"soak: webhook not registered: {doc}")
                self.accepted[i] = doc["execution_id"]
                return
            if status is not None and status < 500:
                raise AssertionError(f"soak: submit {i} answered {status}: {doc}")
            self.report.submit_retries += 1
            self.report.submit_5xx += status is not None
            if time.monotonic() > deadline:
                raise TimeoutError(f"soak: submit {i} kept failing ({status})")
            await asyncio.sleep(0.3)

    async def _submitter(self, session: aiohttp.ClientSession, started: float) -> None:
        while self.submitted < self.config.executions:
            i = self.submitted
            self.submitted += 1
            delay = started + i / self.config.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self._submit(session, i)

    async def _at(self, fraction: float) -> None:
        while self.submitted < fraction * self.config.executions:
            await asyncio.sleep(0.05)

    async def _outage(self) -> None:
        await self.receiver.go_down()
        await asyncio.sleep(self.config.outage_seconds)
        await self.receiver.come_back()

    async def _kill_worker(self) -> None:
        from agentfield_site.jobs import leases, sweeper

        await asyncio.to_thread(self.worker.kill)
        # A supervisor restarts a crashed worker after a pause; waiting for the dead
        # sweeper's lease to lapse lets the new worker's start-up kick run one at once.
        await wait_for_async(lambda: _db(lambda: not leases.is_held(sweeper.LEASE)), 20, 0.2, "the sweeper lease to lapse")
        self.worker = self.env.worker()

    def _start_web(self) -> Proc:
        if self.config.web_processes == 1:
            return self.env.daphne()
        port = free_port()
        args = ["manage.py", "serve", "--web-processes", str(self.config.web_processes), "--no-worker", "--no-agent"]
        web = self.env.script("serve", args, port, {"PORT": str(port)})
        wait_for(lambda: len(self._daphnes(web)) == self.config.web_processes, timeout=60,
                 what=f"{self.config.web_processes} daphne processes\n{web.log()}")
        wait_for(lambda: requests.get(f"{web.url}/health", timeout=1).ok, what=f"serve on {port}\n{web.log()}")
        return web

    @staticmethod
    def _daphnes(web: Proc) -> list[int]:
        return sorted(pid for pid, cmd in children_of(web.popen.pid).items() if "daphne" in cmd)

    async def _restart_daphne(self) -> str:
        """One daphne: stopped and started on its port. Several: one SIGKILLed, the supervisor restarts it."""
        if self.config.web_processes == 1:
            port = self.web.port
            await asyncio.to_thread(self.web.stop)
            self.web = await asyncio.to_thread(self.env.daphne, None, port)
            return "daphne restart"
        victim = self._daphnes(self.web)[0]
        os.kill(victim, signal.SIGKILL)
        await wait_for_async(
            lambda: asyncio.to_thread(lambda: victim not in (d := self._daphnes(self.web)) and len(d) == self.config.web_processes),
            30, 0.2, f"the supervisor to start the killed web process again\n{self.web.log()}",
        )
        return f"web process SIGKILL (1 of {self.config.web_processes}; restarted by serve)"

    async def _faults(self) -> None:
        outages = []
        plan = [(0.10, "receiver down"), (0.25, "worker SIGKILL"), (0.45, "web"),
                (0.60, "receiver down"), (0.75, "worker SIGKILL")]
        for fraction, fault in plan:
            await self._at(fraction)
            at = f"{fault} at {self.submitted}"
            if fault == "receiver down":
                outages.append(asyncio.create_task(self._outage()))
                at += f" for {self.config.outage_seconds:g}s"
            elif fault == "worker SIGKILL":
                await self._kill_worker()
            else:
                at = f"{await self._restart_daphne()} at {self.submitted}"
            self.report.faults.append(at)
        await asyncio.gather(*outages)

    # --- settle and count -----------------------------------------------------------
    async def _settle(self, session: aiohttp.ClientSession) -> None:
        from executions.models import TERMINAL, Execution
        from webhooks.models import Attempt, Delivery

        # One budget for the whole settling: each wait gets what is left of it.
        deadline = time.monotonic() + self.config.settle_timeout

        def timeout() -> float:
            return max(5.0, deadline - time.monotonic())
        ids = set(self.accepted.values())

        def unfinished() -> int:
            return Execution.objects.exclude(status__in=TERMINAL).count()

        # A run that does not settle is still counted (as lost), with the stuck rows named.
        try:
            await wait_for_async(lambda: _db(lambda: unfinished() == 0), timeout(), 0.5, "every execution to be terminal")
        except TimeoutError as exc:
            self.report.stuck = await _db(lambda: [
                f"{row['id']} {row['status']} dispatch={row['dispatch_state']}x{row['dispatch_attempts']}"
                for row in Execution.objects.exclude(status__in=TERMINAL).values(
                    "id", "status", "dispatch_state", "dispatch_attempts")[:5]
            ])
            self.report.faults.append(str(exc))

        def deliveries_settled() -> bool:
            rows = Delivery.objects.filter(kind=Delivery.Kind.COMPLETION)
            return rows.count() >= len(ids) and not rows.exclude(status__in=[Delivery.Status.DELIVERED, Delivery.Status.DEAD]).exists()

        try:
            await wait_for_async(lambda: _db(deliveries_settled), timeout(), 0.5, "every delivery to be delivered or dead")
        except TimeoutError as exc:
            self.report.faults.append(str(exc))

        async with session.get(f"{self.base}/api/v1/webhooks/dlq", params={"limit": 1}) as r:
            self.report.dead_lettered = (await r.json())["total_count"]
        # The receiver is fixed; the operator redrives the whole queue.
        self.receiver.fail_rate = 0.0
        async with session.post(f"{self.base}/api/v1/webhooks/dlq/redrive", json={"all": True}) as r:
            assert r.status == 200, await r.text()
            self.report.redriven = (await r.json())["processed"]

        def all_delivered() -> bool:
            return not Delivery.objects.filter(kind=Delivery.Kind.COMPLETION).exclude(status=Delivery.Status.DELIVERED).exists()

        with contextlib.suppress(TimeoutError):  # counted below as a non-empty DLQ or lost webhooks
            await wait_for_async(lambda: _db(all_delivered), timeout(), 0.5, "the redriven deliveries")
        async with session.get(f"{self.base}/api/v1/webhooks/dlq", params={"limit": 1}) as r:
            self.report.dlq_after_redrive = (await r.json())["total_count"]

        def count() -> dict:
            found = dict(Execution.objects.filter(pk__in=ids).values_list("id", "status"))
            rows = Delivery.objects.filter(kind=Delivery.Kind.COMPLETION)
            return {
                "statuses": Counter(found.values()),
                "missing": len(ids - {k for k, v in found.items() if v in TERMINAL}),
                "deliveries": rows.count(),
                "attempts": Attempt.objects.filter(delivery__kind=Delivery.Kind.COMPLETION).count(),
            }

        counted = await _db(count)
        self.report.executions = len(ids)
        self.report.statuses = counted["statuses"]
        self.report.lost_executions = counted["missing"]
        self.report.deliveries = counted["deliveries"]
        self.report.attempts = counted["attempts"]
        self.report.lost_webhooks = len(ids - self.receiver.executions_acknowledged())

    async def _streams_and_collector(self, session: aiohttp.ClientSession, baseline: int) -> None:
        """Every event id up to now must reach every SSE client and the collector."""
        from observability.models import ForwarderDeadLetter, PlatformEvent
        from observability.streams import EXECUTION_SCOPE

        await asyncio.sleep(1.0)  # let the last outcome events commit

        def expected() -> tuple[set[int], set[int]]:
            rows = PlatformEvent.objects.filter(id__gt=baseline)
            return (set(rows.filter(source__in=EXECUTION_SCOPE).values_list("id", flat=True)),
                    set(rows.values_list("id", flat=True)))

        in_scope, everything = await _db(expected)
        top = max(everything, default=baseline)

        async def caught_up() -> bool:
            return all(c.last_id >= top for c in self.clients) and everything <= set(self.collector.seen)

        try:
            await wait_for_async(caught_up, 30, 0.5, "SSE clients and the collector to catch up")
        except TimeoutError:
            if await _db(lambda: ForwarderDeadLetter.objects.exists()):
                async with session.post(f"{self.base}{OBS}/redrive") as r:
                    assert r.status == 200, await r.text()
            with contextlib.suppress(TimeoutError):  # counted below
                await wait_for_async(caught_up, 15, 0.5, "the collector after its redrive")
        self.report.events = len(in_scope)
        self.report.sse_clients = len(self.clients)
        self.report.sse_connections = sum(c.connections for c in self.clients)
        self.report.sse_duplicates = sum(c.duplicates for c in self.clients)
        self.report.lost_sse = sum(len(in_scope - c.seen) for c in self.clients)
        self.report.collector_events = len(set(self.collector.seen) & everything)
        self.report.collector_duplicates = self.collector.event_duplicates
        self.report.lost_collector = len(everything - set(self.collector.seen))
        self.report.forwarder_dead_letters = await _db(lambda: ForwarderDeadLetter.objects.count())

    async def run(self) -> SoakReport:
        from django.db import connection

        started = time.monotonic()
        self.report.database = connection.vendor
        timeout = aiohttp.ClientTimeout(total=30)
        connector = aiohttp.TCPConnector(limit=self.config.submitters + 8)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            try:
                baseline = await self._start(session)
                mark = time.monotonic()
                self.report.phases["start"] = mark - started
                stop = asyncio.Event()
                self.clients = [
                    ReconnectingSseClient(lambda: f"{self.base}/api/ui/v1/executions/events", baseline,
                                          self.config.sse_lifetime, self.config.seed + n)
                    for n in range(self.config.sse_clients)
                ]
                readers = [asyncio.create_task(c.run(stop)) for c in self.clients]
                submit_started = time.monotonic()
                await asyncio.gather(
                    self._faults(),
                    *(self._submitter(session, submit_started) for _ in range(self.config.submitters)),
                )
                self.report.phases["submit"] = time.monotonic() - mark
                mark = time.monotonic()
                await self._settle(session)
                self.report.phases["settle + redrive"] = time.monotonic() - mark
                mark = time.monotonic()
                await self._streams_and_collector(session, baseline)
                self.report.phases["streams check"] = time.monotonic() - mark
                stop.set()
                await asyncio.gather(*readers)
            finally:
                await self.receiver.close()
                await self.collector.close()
        self.report.receiver_requests = len(self.receiver.requests)
        self.report.injected_failures = self.receiver.injected
        self.report.duplicates = self.receiver.duplicates
        self.report.bad_signatures = sum(s.bad_signatures + s.unsigned for s in (self.receiver, self.collector))
        self.report.wall_seconds = time.monotonic() - started
        return self.report


def run_soak(env: ProcessEnv, config: SoakConfig) -> SoakReport:
    """Run one soak with the processes of `env` (on its database); returns the figures."""
    return asyncio.run(Soak(env, config).run())
