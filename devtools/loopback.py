"""One loopback HTTP server for every end the control plane talks to in development.

`LoopbackServer` stands in for a webhook receiver, an observability collector or
an agent: it records every request, answers from a script (then a default, or a
random injected failure), can check signatures, and keeps a ledger of what it
acknowledged (execution ids, webhook-ids, forwarded event ids). It runs three ways:

- `with LoopbackServer(...) as server:` on a thread of its own (the tests);
- `await server.start()` / `await server.close()` on the caller's event loop,
  where it can also go down and come back (the soak);
- `LoopbackProcess(...)`: in a process of its own, read through `/_loopback/stats`
  (the bench, so that the server does not share the measured process's GIL).

`Blackhole` is the other end: it accepts connections and never answers.
"""

import asyncio
import contextlib
import json
import multiprocessing
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import requests
from aiohttp import web

from agentfield_site.lib.signing import agentfield_signature
from devtools.waiting import wait_for

STATS = "/_loopback/stats"
RESET = "/_loopback/reset"


@dataclass
class Reply:
    """One scripted answer: a JSON-able `body` is sent as JSON; `delay` seconds pass before it."""

    status: int = 200
    headers: dict = field(default_factory=dict)
    body: Any = b"ok"
    delay: float = 0.0

    def response(self) -> web.Response:
        if isinstance(self.body, bytes):
            return web.Response(status=self.status, headers=self.headers, body=self.body)
        return web.Response(status=self.status, headers=self.headers, text=json.dumps(self.body),
                            content_type="application/json")


INJECTED = Reply(500, body=b"injected failure")


class _OnLoopback:
    """Where a server listening on 127.0.0.1:`port` answers `path`."""

    port: int
    path: str

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base}{self.path}"


@dataclass
class Received:
    """One request as it arrived, with the status it was answered."""

    path: str
    headers: Mapping[str, str]  # case-insensitive, as HTTP headers are
    body: bytes
    status: int
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


class LoopbackServer(_OnLoopback):
    """An HTTP server on 127.0.0.1 that answers every POST from its script.

    Each request gets the next of `replies`, else (with probability `fail_rate`,
    from a generator seeded with `seed`) a 500, else `default`. With a `secret`,
    a request whose `X-AgentField-Signature` is wrong counts in `bad_signatures`,
    one without it in `unsigned`. `on_request` is called (on a worker thread)
    with each request before it is answered. `peak_in_flight` is the most
    requests it ever had open at once.
    """

    def __init__(
        self,
        *replies: Reply,
        default: Reply | None = None,
        path: str = "/hook",
        secret: str | None = None,
        fail_rate: float = 0.0,
        seed: int = 0,
        on_request: Callable[[Received], None] | None = None,
    ) -> None:
        self.script = list(replies)
        self.default = default or Reply()
        self.path = path
        self.secret = secret
        self.fail_rate = fail_rate
        self.random = random.Random(seed)
        self.on_request = on_request
        self.port = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        self.down = False
        self.outages = 0
        self.lock = threading.Lock()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.reset()

    @classmethod
    def agent(cls) -> "LoopbackServer":
        """An agent's stand-in: any path, answered 200 `{"ok": true}` until told otherwise."""
        return cls(path="", default=Reply(body={"ok": True}))

    @classmethod
    def collector(cls, status: int = 200, delay: float = 0.0, first: tuple[int, ...] = ()) -> "LoopbackServer":
        """An observability collector: answers `first` statuses in order, then `status`, after `delay` s."""
        return cls(*(Reply(s, body={"ok": True}, delay=delay) for s in first), path="/collect",
                   default=Reply(status, body={"ok": True}, delay=delay))

    def reset(self) -> None:
        """Forget every request and the ledger."""
        with self.lock:
            self.requests: list[Received] = []
            self.injected = 0
            self.bad_signatures = 0
            self.unsigned = 0
            self.duplicates = 0
            # webhook-id -> execution id, for every 2xx: receivers de-duplicate on webhook-id.
            self.acknowledged: dict[str, str] = {}
            # execution id -> when its first 2xx request arrived.
            self.arrived: dict[str, float] = {}
            # forwarded event id -> how many 2xx batches carried it.
            self.seen: Counter[int] = Counter()

    # --- answering ------------------------------------------------------------------
    def _next_reply(self) -> Reply:
        if self.script:
            return self.script.pop(0)
        if self.fail_rate and self.random.random() < self.fail_rate:
            self.injected += 1
            return INJECTED
        return self.default

    def _check_signature(self, received: Received) -> None:
        signature = received.headers.get("X-AgentField-Signature")
        if signature is None:
            self.unsigned += 1
        elif signature != agentfield_signature(received.body, self.secret):
            self.bad_signatures += 1

    def _acknowledge(self, received: Received) -> None:
        """Book a 2xx: the execution (a webhook) or the event ids (a collector batch) it carried."""
        with contextlib.suppress(ValueError):
            doc = received.json()
            if isinstance(doc, dict) and isinstance(doc.get("events"), list):
                self.seen.update(e["event_id"] for e in doc["events"] if isinstance(e, dict) and "event_id" in e)
            elif isinstance(doc, dict) and "execution_id" in doc:
                self.arrived.setdefault(doc["execution_id"], received.at)
                webhook_id = received.headers.get("webhook-id")
                if webhook_id is not None:
                    if webhook_id in self.acknowledged:
                        self.duplicates += 1
                    else:
                        self.acknowledged[webhook_id] = doc["execution_id"]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.down:
            # A keep-alive connection opened before the outage: drop it without an
            # answer, as a crashed host would.
            if request.transport is not None:
                request.transport.abort()
            raise web.HTTPServiceUnavailable()
        with self.lock:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            return await self._answer(request)
        finally:
            with self.lock:
                self.in_flight -= 1

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        # A sender that dies mid-request (a SIGKILLed worker) ends the read: nothing arrived.
        body = await request.read()
        with self.lock:
            reply = self._next_reply()
            received = Received(request.path_qs, request.headers.copy(), body, reply.status, time.time())
            self.requests.append(received)
            if self.secret is not None:
                self._check_signature(received)
            if 200 <= reply.status < 300:
                self._acknowledge(received)
        if self.on_request is not None:
            await asyncio.to_thread(self.on_request, received)
        if reply.delay:
            await asyncio.sleep(reply.delay)
        return reply.response()

    async def _stats(self, request: web.Request) -> web.Response:
        with self.lock:
            stats = {
                "requests": len(self.requests),
                "bad_signatures": self.bad_signatures,
                "unsigned": self.unsigned,
                "distinct": len(self.arrived),
                "events": sum(self.seen.values()),
            }
            if "times" in request.query:
                stats["arrived"] = dict(self.arrived)
            if "low" in request.query:
                low, high = int(request.query["low"]), int(request.query["high"])
                stats["present"] = sum(1 for i in range(low, high + 1) if i in self.seen)
        return web.json_response(stats)

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.Response(status=204)

    # --- on the caller's event loop ---------------------------------------------------
    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get(STATS, self._stats)
        app.router.add_post(RESET, self._reset)
        app.router.add_post("/{tail:.*}", self._handle)
        # Handlers still sleeping on a `delay` are cancelled at close, not waited for.
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        await self._listen()

    async def _listen(self) -> None:
        # A large backlog: the delivery engine opens dozens of connections at once.
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

    async def _close_all(self) -> None:
        """Close, then cancel what is still running on this loop (handlers sleeping on a `delay`)."""
        await self.close()
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    # --- on a thread of its own -------------------------------------------------------
    def run_in_thread(self) -> "LoopbackServer":
        """Serve from a thread with its own event loop until `stop()`."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.start(), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._close_all(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> "LoopbackServer":
        return self.run_in_thread()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- what a test reads ------------------------------------------------------------
    def accepted(self) -> list[dict]:
        """JSON bodies of the requests answered 2xx, in arrival order."""
        with self.lock:
            return [r.json() for r in self.requests if 200 <= r.status < 300]

    def accepted_ids(self) -> list[int]:
        """Forwarded event ids answered 2xx, in arrival order (repeats included)."""
        return [e["event_id"] for envelope in self.accepted() for e in envelope["events"]]

    def where(self, predicate: Callable[[Received], bool]) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if predicate(r)]

    def executions_acknowledged(self) -> set[str]:
        with self.lock:
            return set(self.acknowledged.values())

    @property
    def event_duplicates(self) -> int:
        """Forwarded event ids acknowledged more than once, counted once per repeat."""
        with self.lock:
            return sum(count - 1 for count in self.seen.values())

    # --- in a process of its own --------------------------------------------------------
    def serve_forever(self, port: int) -> None:
        """Serve on `port` in this process until it is terminated."""
        self.port = port

        async def run() -> None:
            await self.start()
            await asyncio.Event().wait()

        asyncio.run(run())


def _serve(port: int, options: dict) -> None:
    LoopbackServer(**options).serve_forever(port)


class LoopbackProcess(_OnLoopback):
    """A `LoopbackServer` in a child process (spawned, so it shares nothing with Django's connections)."""

    def __init__(self, **options: Any) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.path = options.get("path", "/hook")
        self.process = multiprocessing.get_context("spawn").Process(
            target=_serve, args=(self.port, options), daemon=True
        )

    def start(self) -> "LoopbackProcess":
        self.process.start()
        wait_for(self._up, timeout=15, interval=0.1, what=f"the loopback server on {self.port}")
        return self

    def _up(self) -> bool:
        with contextlib.suppress(requests.ConnectionError):
            return requests.get(f"{self.base}{STATS}", timeout=1).ok
        return False

    def stats(self, **params: Any) -> dict:
        """Counts; `times=1` adds `arrived` (execution id -> time), `low`/`high` add `present` event ids."""
        return requests.get(f"{self.base}{STATS}", params=params, timeout=30).json()

    def reset(self) -> None:
        requests.post(f"{self.base}{RESET}", timeout=5).raise_for_status()

    def stop(self) -> None:
        self.process.terminate()
        self.process.join(timeout=10)


class Blackhole:
    """Accepts connections and never answers: a receiver that is down but not refusing.

    `connections` counts the connections accepted (a multiprocessing value when
    `counter` is given, so another process can read it).
    """

    def __init__(self, port: int = 0, counter=None) -> None:
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", port))
        self.server.listen(1024)
        self.server.settimeout(0.1)
        self.counter = counter
        self.open: list[socket.socket] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.getsockname()[1]}/hook"

    @property
    def connections(self) -> int:
        return self.counter.value if self.counter is not None else len(self.open)

    def serve_forever(self) -> None:
        while not self._stop.is_set():
            try:
                self.open.append(self.server.accept()[0])
            except OSError:
                continue
            if self.counter is not None:
                with self.counter.get_lock():
                    self.counter.value += 1

    def __enter__(self) -> "Blackhole":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.thread.join()
        for conn in self.open:
            conn.close()
        self.server.close()
