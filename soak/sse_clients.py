"""SSE clients that hang up at random and resume with `Last-Event-ID`, as browsers do."""

import asyncio
import random
from collections.abc import Callable

import aiohttp

from devtools.sse import FrameParser


class ReconnectingSseClient:
    """Reads an SSE stream for the whole soak, reconnecting after each random lifetime.

    Every reconnect sends the highest id seen so far as `Last-Event-ID`, so the
    server must replay exactly what the client missed while away (including a
    daphne restart). `seen` is the set of event ids received (after de-duplication);
    `duplicates` counts ids received twice.
    """

    def __init__(self, url: Callable[[], str], last_event_id: int, lifetime: tuple[float, float], seed: int) -> None:
        self.url = url
        self.last_id = last_event_id
        self.lifetime = lifetime
        self.random = random.Random(seed)
        self.seen: set[int] = set()
        self.duplicates = 0
        self.connections = 0
        self.errors = 0

    def _record(self, event_id: int) -> None:
        if event_id in self.seen:
            self.duplicates += 1
            return
        self.seen.add(event_id)
        self.last_id = max(self.last_id, event_id)

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, read, hang up, resume: until `stop` is set."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=3, sock_read=None)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not stop.is_set():
                try:
                    await self._one_connection(session, stop)
                except (aiohttp.ClientError, TimeoutError, ConnectionError):
                    self.errors += 1  # daphne restarting: try again shortly
                if not stop.is_set():
                    await asyncio.sleep(self.random.uniform(0.1, 0.5))

    async def _one_connection(self, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.random.uniform(*self.lifetime)
        headers = {"Accept": "text/event-stream", "Last-Event-ID": str(self.last_id)}
        async with session.get(self.url(), headers=headers) as response:
            if response.status != 200:
                self.errors += 1
                return
            self.connections += 1
            parser = FrameParser(keep=False)
            while not stop.is_set() and (remaining := deadline - loop.time()) > 0:
                try:
                    chunk = await asyncio.wait_for(response.content.readany(), timeout=min(remaining, 0.5))
                except TimeoutError:
                    continue
                if not chunk:
                    return  # the server went away
                for frame in parser.feed(chunk):
                    if frame.id is not None:
                        self._record(int(frame.id))
