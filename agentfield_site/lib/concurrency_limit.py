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
"""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

# Where a request's `Place` sits in its ASGI scope (Django's ASGIRequest keeps the scope).
SCOPE_KEY = "agentfield.place"


class Place:
    """One request's place among the `limit`; held from admission until its response starts."""

    def __init__(self, places: asyncio.Semaphore) -> None:
        self._places = places
        self.held = False

    async def take(self) -> None:
        await self._places.acquire()
        self.held = True

    def give_back(self) -> None:
        if self.held:
            self.held = False
            self._places.release()


class ConcurrencyLimit:
    def __init__(self, app, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.app = app
        self.limit = limit
        self._places: asyncio.Semaphore | None = None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._places is None:
            # Created on first use, inside the server's running loop.
            self._places = asyncio.Semaphore(self.limit)
        place = Place(self._places)
        await place.take()

        async def send_and_release(message) -> None:
            if message["type"] == "http.response.start":
                place.give_back()
            await send(message)

        try:
            await self.app({**scope, SCOPE_KEY: place}, receive, send_and_release)
        finally:
            place.give_back()


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
