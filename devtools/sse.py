"""Read Server-Sent Events: a frame parser, an in-process ASGI client and a socket client (tests), used by the soak too."""

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from asgiref.testing import ApplicationCommunicator


@dataclass
class Frame:
    """One SSE message (or a comment, when only `comment` is set)."""

    id: str | None = None
    event: str | None = None
    data: str | None = None
    retry: str | None = None
    comment: str | None = None

    @property
    def json(self) -> dict:
        return json.loads(self.data or "null")


@dataclass
class FrameParser:
    """Incremental parser: feed bytes, take complete frames."""

    buffer: bytes = b""
    frames: list[Frame] = field(default_factory=list)
    keep: bool = True  # keep every frame in `frames` (a long-lived reader sets False)

    def feed(self, chunk: bytes) -> list[Frame]:
        """Add bytes (frames may span chunks, characters too); returns the frames they completed."""
        self.buffer += chunk
        *complete, self.buffer = self.buffer.split(b"\n\n")
        new: list[Frame] = []
        for raw in complete:
            frame = Frame()
            for line in raw.decode().split("\n"):
                if line.startswith(":"):
                    frame.comment = line[1:].strip()
                    continue
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "data":
                    frame.data = value if frame.data is None else frame.data + "\n" + value
                elif name in ("id", "event", "retry"):
                    setattr(frame, name, value)
            new.append(frame)
        if self.keep:
            self.frames.extend(new)
        return new


def events_only(frames: list[Frame]) -> list[Frame]:
    return [f for f in frames if f.data is not None]


class AsgiSse:
    """An SSE request against an ASGI app, in process."""

    def __init__(self, app, path: str, query: str = "", headers: dict[str, str] | None = None) -> None:
        raw_headers = [(b"host", b"testserver")] + [
            (k.lower().encode(), v.encode()) for k, v in (headers or {}).items()
        ]
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query.encode(),
            "headers": raw_headers,
            "client": ("127.0.0.1", 5000),
            "server": ("testserver", 80),
        }
        self.comm = ApplicationCommunicator(app, scope)
        self.parser = FrameParser()
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.body = b""
        self.ended = False

    async def start(self, timeout: float = 10) -> "AsgiSse":
        await self.comm.send_input({"type": "http.request", "body": b"", "more_body": False})
        start = await self.comm.receive_output(timeout)
        assert start["type"] == "http.response.start", start
        self.status = start["status"]
        self.headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
        return self

    async def read_until(self, done, timeout: float = 10) -> list[Frame]:
        """Read until `done(frames)` is true; returns all frames so far."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not done(self.parser.frames):
            remaining = deadline - loop.time()
            if remaining <= 0 or self.ended:
                raise AssertionError(f"stream did not deliver in time; got {self.parser.frames!r}")
            message = await self.comm.receive_output(remaining)
            if message["type"] == "http.response.body":
                self.body += message.get("body", b"")
                if self.headers.get("content-type", "").startswith("text/event-stream"):
                    self.parser.feed(message.get("body", b""))
                if not message.get("more_body", False):
                    self.ended = True
        return self.parser.frames

    async def read_events(self, count: int, timeout: float = 10) -> list[Frame]:
        frames = await self.read_until(lambda fs: len(events_only(fs)) >= count, timeout)
        return events_only(frames)

    async def read_to_end(self, timeout: float = 10) -> list[Frame]:
        await self.read_until(lambda fs: self.ended, timeout)
        return self.parser.frames

    async def close(self) -> None:
        await self.comm.send_input({"type": "http.disconnect"})
        with contextlib.suppress(asyncio.CancelledError):
            await self.comm.wait(timeout=5)


class SocketSse:
    """An SSE request to a real server over a raw socket (HTTP/1.1, chunked)."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.url = urlsplit(url)
        self.extra = headers or {}
        self.parser = FrameParser()
        self.status = 0
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def start(self, timeout: float = 10) -> "SocketSse":
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection(self.url.hostname, self.url.port), timeout
        )
        target = self.url.path + (f"?{self.url.query}" if self.url.query else "")
        lines = [f"GET {target} HTTP/1.1", f"Host: {self.url.netloc}", "Accept: text/event-stream"]
        lines += [f"{k}: {v}" for k, v in self.extra.items()]
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await self._writer.drain()
        head = await asyncio.wait_for(self._reader.readuntil(b"\r\n\r\n"), timeout)
        self.status = int(head.split(b" ", 2)[1])
        return self

    async def _chunk(self) -> bytes:
        size_line = await self._reader.readline()
        size = int(size_line.strip() or b"0", 16)
        if size == 0:
            return b""
        data = await self._reader.readexactly(size)
        await self._reader.readexactly(2)
        return data

    async def read_until(self, done, timeout: float = 15) -> list[Frame]:
        """Read until `done(frames)` is true; returns all frames so far."""

        async def loop() -> None:
            while not done(self.parser.frames):
                chunk = await self._chunk()
                if not chunk:
                    raise AssertionError(f"stream ended early after {self.parser.frames!r}")
                self.parser.feed(chunk)

        await asyncio.wait_for(loop(), timeout)
        return self.parser.frames

    async def subscribed(self, timeout: float = 15) -> None:
        """Wait for the `retry:` preamble: the server sends it once the stream is live."""
        await self.read_until(lambda fs: any(f.retry for f in fs), timeout)

    async def read_events(self, count: int, timeout: float = 15) -> list[Frame]:
        await self.read_until(lambda fs: len(events_only(fs)) >= count, timeout)
        return events_only(self.parser.frames)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError):
                await self._writer.wait_closed()
