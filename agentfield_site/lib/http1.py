"""A small HTTP/1.1 client on asyncio transports: one POST, one response, keep-alive pools.

What the outbound client needs and nothing more, at a fraction of a general
client's cost per request (the delivery engine sends thousands a second from one
thread): requests go out as one write, responses are parsed by llhttp (through
`httptools`, the parser uvicorn uses), idle connections are kept per origin.

- Every new connection is resolved here and the resolved addresses go through
  the caller's `guard` before any connection is made; the connection is then made
  to a checked address, so DNS rebinding between check and connect is impossible.
- HTTPS verifies the certificate against the URL's host name (SNI and Host kept).
- Nothing is followed: a 3xx is an answer like any other.
- A response body is read up to `body_limit` bytes; past that the connection is
  dropped instead of drained. Response headers are capped too.
- One timeout covers the whole exchange, connection included.
- A connection reused from the pool that the server had closed meanwhile (its
  keep-alive timeout) fails before any byte of a response: the request is sent
  once more on a new connection. Webhooks are at-least-once, and receivers
  de-duplicate on `webhook-id`.
"""

import asyncio
import functools
import ipaddress
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

import certifi
import httptools
import idna

MAX_HEADER_BYTES = 64 * 1024
# Everything of a response that is not its body (status line, headers, chunk
# sizes, trailers) may take at most this much: a hostile server cannot make the
# parser buffer an endless header line or trailer.
MAX_FRAMING_BYTES = 4 * MAX_HEADER_BYTES
# Idle connections are closed after this long (servers commonly keep them 5 to 75 s).
IDLE_SECONDS = 30.0
# What a request target may hold unescaped (RFC 3986 reserved and unreserved, and %).
_TARGET_SAFE = "/?:@!$&'()*+,;=-._~%"
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# Set here, from the request itself: a caller's header of the same name would break the framing.
_FRAMING = frozenset({"host", "content-length", "transfer-encoding", "connection"})


class InvalidRequest(ValueError):
    """The request cannot be written: a bad URL, or a header that would break the framing."""


class ConnectionLost(ConnectionError):
    """The server closed the connection, or sent something that is not HTTP."""

    def __init__(self, reason: str, *, before_response: bool = False) -> None:
        super().__init__(reason)
        self.before_response = before_response  # not one byte of a response came


@dataclass
class Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    # Set when the body could not be read to its end (status and headers came).
    error: str = ""


def ascii_hostname(host: str) -> str:
    """The host name as it goes on the wire and to DNS: IDNA 2008 with UTS #46 mapping, as browsers do.

    Python's own "idna" codec follows IDNA 2003, which maps some names to a
    different domain (straße.de to strasse.de).
    """
    return host if host.isascii() else idna.encode(host, uts46=True).decode("ascii")


@dataclass(frozen=True)
class _Origin:
    scheme: str
    host: str  # as on the wire, lower case, IPv6 without brackets
    port: int
    # Connections made under one guard policy are not reused under another.
    policy: Hashable = None


@functools.lru_cache(maxsize=1024)
def _origin_and_first_lines(url: str) -> tuple[str, str, int, str]:
    """(scheme, host as on the wire, port, the head's first two lines) for `url`; the same for every request to it."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    scheme, host = parts.scheme.lower(), (parts.hostname or "")
    if scheme not in ("http", "https") or not host:
        raise InvalidRequest("the URL must be http(s) with a host")
    default = 443 if scheme == "https" else 80
    port = port or default
    try:
        ascii_host = ascii_hostname(host)
    except idna.IDNAError as exc:
        raise InvalidRequest(f"the host name cannot be encoded: {exc}") from None
    shown = f"[{ascii_host}]" if ":" in ascii_host else ascii_host
    if port != default:
        shown = f"{shown}:{port}"
    target = quote(parts.path or "/", safe=_TARGET_SAFE)
    if parts.query:
        target += "?" + quote(parts.query, safe=_TARGET_SAFE)
    return scheme, ascii_host.lower(), port, f"POST {target} HTTP/1.1\r\nHost: {shown}"


def _head(url: str, headers: Mapping[str, str], length: int, policy: Hashable = None) -> tuple[_Origin, bytes]:
    """The origin to connect to and the request's head (request line and headers)."""
    scheme, host, port, first = _origin_and_first_lines(url)
    lines = [first, f"Content-Length: {length}"]
    for name, value in headers.items():
        if not _TOKEN.fullmatch(name) or _CONTROL.search(value) or name.lower() in _FRAMING:
            raise InvalidRequest(f"header {name[:40]!r} cannot be sent")
        lines.append(f"{name}: {value}")
    try:
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    except UnicodeEncodeError:
        raise InvalidRequest("a header holds a character HTTP/1.1 cannot carry") from None
    return _Origin(scheme, host, port, policy), head


class _Connection(asyncio.Protocol):
    """One connection; at most one request on it at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._exchange: _Exchange | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        exchange = self._exchange
        if exchange is None:  # bytes nobody asked for: the connection cannot be trusted
            self.close()
            return
        exchange.feed(data)

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self._exchange is not None:
            self._exchange.lost(exc)

    def close(self) -> None:
        """Drop the connection now: `abort`, not `close`, which would wait to flush
        what the peer does not read (or, with TLS, for its close_notify)."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    async def send(self, head: bytes, body: bytes, body_limit: int) -> "tuple[Response, bool]":
        """Write the request and wait for its response: (response, whether the connection can be reused)."""
        exchange = self._exchange = _Exchange(body_limit)
        try:
            self.transport.write(head + body)
            return await exchange.done, exchange.reusable
        finally:
            self._exchange = None


class _Exchange:
    """The response to one request, parsed as it arrives (httptools calls the on_* methods)."""

    def __init__(self, body_limit: int) -> None:
        self.done: asyncio.Future = asyncio.get_running_loop().create_future()
        self.parser = httptools.HttpResponseParser(self)
        self.body_limit = body_limit
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.body_bytes = 0
        self.started = False  # any byte of a response came
        self.fed = 0  # bytes of the response so far
        self.header_bytes = 0
        self.headers_done = False
        self.until_close = False  # the body ends when the server closes
        self.reusable = False

    def feed(self, data: bytes) -> None:
        self.started = True
        if self.done.done():  # bytes past the end of the answer: the connection is not clean
            self.reusable = False
            return
        self.fed += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._finish()  # a 101 we never asked for: take it as the answer, drop the connection
        except httptools.HttpParserError as exc:
            self.reusable = False
            raised = exc.__context__  # what a callback below raised, if one did
            self._fail(raised if isinstance(raised, ConnectionLost) else ConnectionLost(f"not a valid HTTP response: {exc}"))
        # The parser buffers an unfinished header line or trailer whole: bound
        # what it may hold by what has been fed.
        if not self.headers_done and self.fed > MAX_HEADER_BYTES:
            self._fail(ConnectionLost(f"response headers larger than {MAX_HEADER_BYTES} bytes"))
        elif self.fed - self.body_bytes > MAX_FRAMING_BYTES:
            self._fail(ConnectionLost(f"response framing (all but the body) larger than {MAX_FRAMING_BYTES} bytes"))

    def lost(self, exc: BaseException | None) -> None:
        if self.done.done():
            return
        if self.headers_done and self.until_close:
            self._finish()
        else:
            reason = f"the connection was lost: {exc}" if exc else "the server closed the connection"
            self._fail(ConnectionLost(reason, before_response=not self.started))

    def _fail(self, exc: Exception) -> None:
        if self.done.done():
            return
        if self.headers_done:  # the answer came; its body did not
            body = b"".join(self.body)[: self.body_limit]
            self.done.set_result(Response(self.status, self.headers, body, error=str(exc)))
        else:
            self.done.set_exception(exc)

    def _finish(self, reusable: bool = False) -> None:
        if not self.done.done():
            self.reusable = reusable
            self.done.set_result(Response(self.status, self.headers, b"".join(self.body)[: self.body_limit]))

    # httptools callbacks; once the answer is complete, what follows is not
    # part of it (a second message on the same bytes): the connection goes.

    def on_message_begin(self) -> None:
        if self.done.done():
            self.reusable = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.headers_done or self.done.done():
            return  # trailers, or another message: never merged into the answer's headers
        self.header_bytes += len(name) + len(value) + 4
        if self.header_bytes > MAX_HEADER_BYTES:
            raise ConnectionLost(f"response headers larger than {MAX_HEADER_BYTES} bytes")
        self.headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))

    def on_headers_complete(self) -> None:
        if self.done.done():
            return
        self.status = self.parser.get_status_code()
        if 100 <= self.status < 200:
            return  # interim (100 Continue, 103 Early Hints): the answer follows
        self.headers_done = True
        fields = {name.lower(): value for name, value in self.headers.items()}
        # RFC 9112 6.3: without Content-Length, and unless chunked is the last
        # transfer coding, a response's body runs until the server closes.
        chunked = fields.get("transfer-encoding", "").split(",")[-1].strip().lower() == "chunked"
        self.until_close = self.status not in (204, 304) and not chunked and "content-length" not in fields

    def on_body(self, chunk: bytes) -> None:
        if self.done.done() and not self.body_bytes > self.body_limit:
            self.reusable = False
            return
        if self.body_bytes <= self.body_limit:
            self.body.append(chunk)
        self.body_bytes += len(chunk)
        if self.body_bytes > self.body_limit:
            self._finish()  # enough: the connection is dropped rather than drained

    def on_message_complete(self) -> None:
        if self.done.done():
            return
        if not self.headers_done:  # an interim response ended: wait for the real one
            self.headers = {}
            return
        self._finish(reusable=self.parser.should_keep_alive() and self.body_bytes <= self.body_limit)


# Called with a host (as in the URL) and its getaddrinfo results before any
# connection is made; raises to refuse.
Guard = Callable[[str, list[tuple]], None]
# Looks a host name and port up on the pool's loop: getaddrinfo's results, or OSError.
Resolver = Callable[[str, int], Awaitable[list[tuple]]]


async def _getaddrinfo(host: str, port: int) -> list[tuple]:
    return await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)


class Pool:
    """Keep-alive connections per origin, on one event loop. Not thread-safe: use it from its loop."""

    def __init__(self, guard: Guard, resolver: Resolver = _getaddrinfo) -> None:
        self._guard = guard
        self._resolver = resolver
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._tls = ssl.create_default_context(cafile=certifi.where())
        self._sweeping = False

    async def post(
        self, url: str, headers: Mapping[str, str], body: bytes, body_limit: int, policy: Hashable = None
    ) -> Response:
        """POST `body` to `url`; raises InvalidRequest, the guard's refusal, OSError or ConnectionLost.

        `policy` is whatever the guard's decisions depend on (an allow-list):
        a connection is reused only under the policy it was checked under.
        """
        origin, head = _head(url, headers, len(body), policy)
        conn = self._take(origin)
        if conn is not None:
            try:
                return await self._send(origin, conn, head, body, body_limit)
            except ConnectionLost as exc:
                if not exc.before_response:
                    raise
                # A kept-alive connection the server had closed: once more on a new one.
        conn = await self._connect(origin)
        return await self._send(origin, conn, head, body, body_limit)

    async def _send(self, origin: _Origin, conn: _Connection, head: bytes, body: bytes, limit: int) -> Response:
        reusable = False
        try:
            response, reusable = await conn.send(head, body, limit)
            return response
        finally:
            if reusable and not conn.closed:
                self._give_back(origin, conn)
            else:
                conn.close()

    def _take(self, origin: _Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < IDLE_SECONDS:
                return conn
            conn.close()
        return None

    def _give_back(self, origin: _Origin, conn: _Connection) -> None:
        conn.idle_since = time.monotonic()
        self._idle.setdefault(origin, []).append(conn)
        if not self._sweeping:
            self._sweeping = True
            asyncio.get_running_loop().call_later(IDLE_SECONDS / 3, self._sweep)

    def _sweep(self) -> None:
        """Close connections idle too long, so a quiet pool holds no sockets."""
        now = time.monotonic()
        for origin, idle in list(self._idle.items()):
            keep = [c for c in idle if not c.closed and now - c.idle_since < IDLE_SECONDS]
            for conn in idle:
                if conn not in keep:
                    conn.close()
            if keep:
                self._idle[origin] = keep
            else:
                del self._idle[origin]
        self._sweeping = bool(self._idle)
        if self._sweeping:
            asyncio.get_running_loop().call_later(IDLE_SECONDS / 3, self._sweep)

    async def _connect(self, origin: _Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        try:  # an IP literal needs no lookup (and no thread of the loop's executor)
            ip = ipaddress.ip_address(origin.host)
            family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
            infos = [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (origin.host, origin.port))]
        except ValueError:
            infos = await self._resolver(origin.host, origin.port)
        self._guard(origin.host, infos)
        tls = self._tls if origin.scheme == "https" else None
        error: OSError | None = None
        for family, _, proto, _, address in infos:
            try:
                _, conn = await loop.create_connection(
                    _Connection, host=address[0], port=address[1], family=family, proto=proto,
                    ssl=tls, server_hostname=origin.host if tls else None,
                )
                return conn
            except OSError as exc:
                error = exc
        raise error or OSError(f"{origin.host} has no address")
