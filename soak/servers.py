"""Loopback servers the soak points the control plane at: a flaky webhook receiver, a collector.

Both run on the orchestrator's event loop (aiohttp) and check every signature, so a
delivery that arrives unsigned or re-serialized counts as a failure of the run.
"""

import json
import random
from collections import Counter
from collections.abc import Awaitable, Callable

from aiohttp import web

from agentfield_site.lib.signing import agentfield_signature


class _LoopbackServer:
    """An aiohttp app on 127.0.0.1 that can go down (refusing and dropping connections) and come back."""

    def __init__(self, path: str, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> None:
        self.path = path
        self.handler = handler
        self.port = 0
        self.down = False
        self.outages = 0
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    async def _entry(self, request: web.Request) -> web.StreamResponse:
        if self.down:
            # A keep-alive connection opened before the outage: drop it without an
            # answer, as a crashed host would.
            if request.transport is not None:
                request.transport.abort()
            raise web.HTTPServiceUnavailable()
        return await self.handler(request)

    async def start(self) -> None:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post(self.path, self._entry)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await self._listen()

    async def _listen(self) -> None:
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True, backlog=1024)
        await self._site.start()
        if not self.port:
            self.port = self._runner.addresses[0][1]

    async def go_down(self) -> None:
        """Stop listening (new connections are refused) and drop requests on open connections."""
        self.down = True
        self.outages += 1
        await self._site.stop()

    async def come_back(self) -> None:
        await self._listen()
        self.down = False

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class FlakyReceiver(_LoopbackServer):
    """A completion-webhook receiver that answers 500 to `fail_rate` of requests at random.

    It de-duplicates on `webhook-id`, as the contract tells receivers to:
    `acknowledged` maps each webhook-id to its execution id, and every 2xx for an id
    already acknowledged counts as a duplicate.
    """

    def __init__(self, secret: str, fail_rate: float, seed: int) -> None:
        super().__init__("/hook", self.handle)
        self.secret = secret
        self.fail_rate = fail_rate
        self.random = random.Random(seed)
        self.requests = 0
        self.failed = 0
        self.bad_signatures = 0
        self.duplicates = 0
        self.acknowledged: dict[str, str] = {}

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests += 1
        if request.headers.get("X-AgentField-Signature") != agentfield_signature(body, self.secret):
            self.bad_signatures += 1
        if self.random.random() < self.fail_rate:
            self.failed += 1
            return web.Response(status=500, text="injected failure")
        webhook_id = request.headers.get("webhook-id", "")
        if webhook_id in self.acknowledged:
            self.duplicates += 1
        else:
            self.acknowledged[webhook_id] = json.loads(body)["execution_id"]
        return web.Response(text="ok")

    def executions_acknowledged(self) -> set[str]:
        return set(self.acknowledged.values())


class Collector(_LoopbackServer):
    """The observability collector: records every forwarded event id, counts re-sends."""

    def __init__(self, secret: str) -> None:
        super().__init__("/collect", self.handle)
        self.secret = secret
        self.requests = 0
        self.bad_signatures = 0
        self.seen: Counter[int] = Counter()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests += 1
        if request.headers.get("X-AgentField-Signature") != agentfield_signature(body, self.secret):
            self.bad_signatures += 1
        for event in json.loads(body)["events"]:
            self.seen[event["event_id"]] += 1
        return web.Response(status=204)

    @property
    def duplicates(self) -> int:
        return sum(count - 1 for count in self.seen.values())
