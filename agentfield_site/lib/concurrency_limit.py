"""A bound on how many HTTP requests one ASGI process works on at once.

Under ASGI, Django runs every synchronous view in a thread of its own, and each of
those threads opens its own database connection. Two hundred concurrent clients
would mean two hundred threads and two hundred connections: PostgreSQL refuses
past `max_connections`, and SQLite's single writer is fought over by all of them.

`ConcurrencyLimit` lets `limit` requests in and queues the rest, first come
first served, on the event loop (where waiting costs a coroutine, not a thread
or a connection). A request gives its place back as soon as its response starts:
an ordinary request has finished its work by then, and a stream (SSE) then runs
for as long as its client stays, without holding a place.

A request that must wait for something else (the synchronous execute waiting for
its agent) lends its place back while it waits (`lend_place`), and queues for one
again to write its answer: waiting costs the others nothing.

Overload is explicit: a request that has waited `queue_timeout` seconds for a
place is answered 503 `overloaded` with `Retry-After`, instead of waiting without
bound while its client has long given up. Requests that `unlimited(scope)` names
(event streams, which hold nothing once they run) never queue.
"""

import asyncio
import json
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

# Where a request's `Place` sits in its ASGI scope (Django's ASGIRequest keeps the scope).
SCOPE_KEY = "agentfield.place"


class Place:
    """One request's place among the `limit`; held from admission until its response starts."""

    def __init__(self, places: asyncio.Semaphore) -> None:
        self._places = places
        self.held = False

    async def take(self, timeout: float | None = None) -> bool:
        """Wait for a place; False when `timeout` seconds passed first."""
        try:
            await asyncio.wait_for(self._places.acquire(), timeout)
        except TimeoutError:
            return False
        self.held = True
        return True

    def give_back(self) -> None:
        if self.held:
            self.held = False
            self._places.release()


class ConcurrencyLimit:
    def __init__(
        self, app, limit: int, queue_timeout: float | None = None,
        unlimited: Callable[[dict], bool] | None = None,
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.app = app
        self.limit = limit
        self.queue_timeout = queue_timeout
        self.unlimited = unlimited
        self._places: asyncio.Semaphore | None = None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or (self.unlimited is not None and self.unlimited(scope)):
            await self.app(scope, receive, send)
            return
        if self._places is None:
            # Created on first use, inside the server's running loop.
            self._places = asyncio.Semaphore(self.limit)
        place = Place(self._places)
        if not await place.take(self.queue_timeout):
            await self._overloaded(send)
            return

        async def send_and_release(message) -> None:
            if message["type"] == "http.response.start":
                place.give_back()
            await send(message)

        try:
            await self.app({**scope, SCOPE_KEY: place}, receive, send_and_release)
        finally:
            place.give_back()

    async def _overloaded(self, send) -> None:
        body = json.dumps({
            "error": "overloaded",
            "message": f"The server is working on {self.limit} requests and this one waited "
                       f"{self.queue_timeout:g} s for its turn; retry shortly.",
        }).encode()
        # Long enough for the queue in front to move, short enough for a client to come back soon.
        retry_after = str(max(1, math.ceil((self.queue_timeout or 1) / 10)))
        await send({
            "type": "http.response.start",
            "status": 503,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                        (b"retry-after", retry_after.encode())],
        })
        await send({"type": "http.response.body", "body": body})


@asynccontextmanager
async def lend_place(request) -> AsyncIterator[None]:
    """Give the request's place back for the block, and queue for one again after it.

    A no-op outside `ConcurrencyLimit` (the test client, a WSGI server).
    """
    place = getattr(request, "scope", {}).get(SCOPE_KEY)
    if place is None or not place.held:
        yield
        return
    place.give_back()
    try:
        yield
    finally:
        await place.take()
