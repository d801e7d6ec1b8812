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
"""

import asyncio


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
        places = self._places
        await places.acquire()
        held = True

        def give_back() -> None:
            nonlocal held
            if held:
                held = False
                places.release()

        async def send_and_release(message) -> None:
            if message["type"] == "http.response.start":
                give_back()
            await send(message)

        try:
            await self.app(scope, receive, send_and_release)
        finally:
            give_back()
