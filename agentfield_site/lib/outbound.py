"""Every request to a user-supplied URL: validation, headers, signing, one attempt, one verdict.

Completion webhooks, subscriptions, test sends and the collector forwarder all
go through here, so they share one set of rules for what a caller may configure
(`clean_url`, `clean_headers`, `clean_secret`), one way of building and signing
the headers of an attempt, and one classification of what came back (`classify`).
They differ only in what they send, where, and how often they retry.

Requests go out on one asyncio client per process (`http1`, a small HTTP/1.1
client, on a background event loop thread): a receiver that never answers costs
a socket and a timer, not a thread. Synchronous callers (the delivery engine's
claim loop, the forwarder's run loop) hand requests over with `submit` and keep
their database work on their own thread. The address guard of `safe_http`
applies when a connection is made, on the addresses resolved then, and the
connection goes to a checked address; redirects are never followed; response
bodies are capped.
"""

import asyncio
import enum
import ipaddress
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiodns
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder

from . import http1, safe_http, signing, strict_json

log = logging.getLogger(__name__)

USER_AGENT = "AgentField-Webhooks/0.1.0"
MAX_URL_LENGTH = 2048
MAX_HEADERS = 20
MAX_HEADER_LENGTH = 512
MAX_SECRET_LENGTH = 4096

# Set by the platform on every attempt, or framing and hop-by-hop headers that a
# caller could use to desynchronise the receiver's HTTP parser.
RESERVED_HEADERS = frozenset({
    "x-agentfield-signature", "content-type", "host", "content-length", "transfer-encoding",
    "connection", "keep-alive", "te", "trailer", "upgrade", "expect",
})
RESERVED_PREFIXES = ("webhook-", "proxy-")
# RFC 9110 token characters: what a header name may be made of.
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class InvalidTarget(ValueError):
    """A URL, header map or secret a caller may not configure; the message says why."""


# --- What a caller may configure --------------------------------------------------


def clean_url(value: object) -> str:
    """The URL, stripped, or `InvalidTarget`: http(s), no credentials, no blocked address."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidTarget("url is required")
    url = value.strip()
    if len(url) > MAX_URL_LENGTH:
        raise InvalidTarget(f"url is longer than {MAX_URL_LENGTH} characters")
    try:
        safe_http.check_url(url)
    except safe_http.UnsafeURL as exc:
        reason = str(exc)
        if isinstance(exc, safe_http.BlockedAddress):
            # Say what to change: the README's tour reaches localhost only through this list.
            reason += "; webhooks and the collector may reach public addresses or WEBHOOK_ALLOWED_HOSTS"
        raise InvalidTarget(reason) from exc
    return url


def _visible(text: str, *, space: bool) -> bool:
    return all(0x21 <= ord(c) <= 0x7E or (space and c == " ") for c in text)


def clean_headers(value: object) -> dict[str, str]:
    """Custom headers as `{name: str}`, or `InvalidTarget` (CONTRACT.md's header rules)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidTarget("headers must be an object of name: value strings")
    if len(value) > MAX_HEADERS:
        raise InvalidTarget(f"at most {MAX_HEADERS} headers are allowed")
    clean: dict[str, str] = {}
    for name, raw in value.items():
        if not isinstance(name, str) or not name:
            raise InvalidTarget("header names must be non-empty strings")
        shown = repr(name[:40])
        if not isinstance(raw, str | int | float) or isinstance(raw, bool):
            raise InvalidTarget(f"header {shown} must have a string value")
        text = str(raw)
        if len(name) > MAX_HEADER_LENGTH or len(text) > MAX_HEADER_LENGTH:
            raise InvalidTarget(f"header {shown} is longer than {MAX_HEADER_LENGTH} characters")
        if not set(name) <= _TOKEN:
            raise InvalidTarget(f"header name {shown} may only hold letters, digits and !#$%&'*+-.^_`|~")
        if not _visible(text, space=True):
            raise InvalidTarget(f"header {shown} has a control or non-ASCII character in its value")
        lower = name.lower()
        if lower in RESERVED_HEADERS or lower.startswith(RESERVED_PREFIXES):
            raise InvalidTarget(f"header {shown} is reserved: the platform or the HTTP framing sets it")
        if lower in {n.lower() for n in clean}:
            raise InvalidTarget(f"header {shown} is given twice")
        clean[name] = text
    return clean


def clean_secret(value: object) -> str:
    """The signing secret ('' for none), or `InvalidTarget`."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidTarget("secret must be a string")
    if len(value) > MAX_SECRET_LENGTH:
        raise InvalidTarget(f"secret is longer than {MAX_SECRET_LENGTH} characters")
    return value


def encode_body(document: object) -> bytes:
    """The bytes sent and signed: compact JSON, UTF-8, produced once.

    A bad value stored before the strict parser (a lone surrogate, an infinite
    number) is escaped rather than raised on (see `strict_json.dumps`), the same for
    every sender: one such value must not fail a completion, a subscription or a
    forwarded batch, attempt after attempt.
    """
    return strict_json.dumps(document, cls=DjangoJSONEncoder, separators=(",", ":"), ensure_ascii=False).encode()


def destination_of(url: str) -> str:
    """`scheme://host:port`, the unit that circuit breakers and in-flight caps count."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return url[:255]
    scheme = (parts.scheme or "http").lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    port = port or (443 if scheme == "https" else 80)
    return f"{scheme}://{host}:{port}"[:255]


# --- One attempt ---------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One POST: the exact body bytes, signed fresh under a stable message id."""

    url: str
    body: bytes
    msg_id: str
    secrets: Sequence[str] = ()
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout: float = 10.0

    def wire_headers(self) -> dict[str, str]:
        """Fixed headers, the caller's own, then this attempt's signatures."""
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        headers.update(self.headers)
        headers.update(signing.sign(self.body, self.msg_id, self.secrets))
        return headers


@dataclass
class Outcome:
    """What one attempt did; `status` is None when no HTTP response came back."""

    status: int | None = None
    headers: dict = field(default_factory=dict)
    body: str = ""
    error: str = ""
    duration_ms: int = 0
    retry_after: str | None = None
    # Connection refused, reset, timed out, or unresolvable: the receiver looks down.
    unreachable: bool = False

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def describe(self) -> str:
        """The error text an attempt records ('' when delivered)."""
        if self.error:
            return self.error
        if self.ok:
            return ""
        if self.status is not None and 300 <= self.status < 400:
            return f"HTTP {self.status}: redirects are not followed"
        return f"HTTP {self.status}"


class Verdict(enum.Enum):
    """What an attempt means, whoever sent it."""

    DELIVERED = "delivered"
    RETRY = "retry"  # 429, 5xx, timeout, connection error: try again later
    REFUSED = "refused"  # 3xx and other 4xx: the receiver answered, but did not take it
    GONE = "gone"  # 410: the receiver asks never to be called again
    BLOCKED = "blocked"  # the address guard refused the URL: no request was made


def classify(outcome: Outcome) -> Verdict:
    """The one classification of an attempt; callers decide how often to retry each kind."""
    if outcome.ok:
        return Verdict.DELIVERED
    if outcome.status is None:
        return Verdict.BLOCKED if outcome.error.startswith("blocked") else Verdict.RETRY
    if outcome.status == 410:
        return Verdict.GONE
    if outcome.status == 429 or outcome.status >= 500:
        return Verdict.RETRY
    return Verdict.REFUSED


def destination_failed(outcome: Outcome) -> bool:
    """True when the attempt says the receiver is down (what a circuit breaker counts)."""
    return outcome.unreachable or (outcome.status is not None and outcome.status >= 500)


def response_text(body: bytes) -> str:
    """A receiver's answer as text every reader can store: invalid UTF-8 and NUL as U+FFFD.

    The body is the receiver's to choose, and it is kept (a webhook attempt's
    `response_body`, the collector's error): PostgreSQL refuses a NUL in text,
    and the write would fail with it, attempt after attempt, with the other
    deliveries recorded in the same transaction.
    """
    text = body.decode("utf-8", errors="replace")
    return text.replace("\x00", strict_json.REPLACEMENT) if "\x00" in text else text


# --- The client ------------------------------------------------------------------------


# Host names are looked up by c-ares on the client's loop, not by getaddrinfo on
# the loop's few executor threads: a receiver whose name server never answers
# (one key can name any number of such hosts) costs a timer, and cannot hold up
# the lookups of everyone else's new connections. Each name server is asked for
# DNS_TIMEOUT seconds, DNS_TRIES times; the attempt's own timeout bounds the rest.
DNS_TIMEOUT = 2.0
DNS_TRIES = 2
# What a host name handed to a resolver may hold (http1 gives it in ASCII, lower case):
# printable ASCII without space. Anything else is no name (a NUL, a control character).
_HOST_CHARACTERS = re.compile(r"[!-~]+")
_NUMERIC = re.compile(r"[0-9a-fx.]+")


def _guard(host: str, infos: list[tuple]) -> None:
    """Refuse a connection to `host` if any address it resolved to is blocked (`safe_http`'s rules).

    Runs for every new connection, on the addresses the connection is then made
    to: a name rebound to a private address since it was registered is caught.
    """
    if safe_http.is_allowed_host(host):
        return
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        safe_http.check_resolved(host, infos)
        return
    reason = safe_http.blocked_reason(ip)
    if reason and not safe_http.is_allowed_address(ip):
        raise safe_http.BlockedAddress(f"blocked {reason}")


class Client:
    """One HTTP/1.1 connection pool (`http1`) on a background event loop, shared by every thread of a process."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="outbound", daemon=True)
        self._thread.start()
        self._ready.wait()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._resolvers: dict[tuple[str, ...], aiodns.DNSResolver] = {}  # by WEBHOOK_NAMESERVERS
        # No proxy from the environment: a proxy would resolve names itself, past the guard.
        self._pool = http1.Pool(guard=_guard, resolver=self._resolve)
        self._ready.set()
        self._loop.run_forever()

    async def _resolve(self, host: str, port: int) -> list[tuple]:
        """`host`'s addresses as getaddrinfo gives them (`http1.Resolver`); OSError when there are none."""
        if not _HOST_CHARACTERS.fullmatch(host):
            # A NUL would make inet_aton raise ValueError (an internal error, not an unreachable
            # host) and c-ares look up only what comes before it; no name server has such a name.
            raise OSError(f"cannot resolve {host!r}: not a host name")
        if _NUMERIC.fullmatch(host):
            # The numeric spellings getaddrinfo takes as addresses (0x7f000001, 127.1), as it does;
            # only those: glibc's inet_aton also takes "127.0.0.1 anything", getaddrinfo does not.
            try:
                address = socket.inet_ntoa(socket.inet_aton(host))
            except OSError:
                pass
            else:
                return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port))]
        if host == "localhost":
            # As the system has it (/etc/hosts, never a name server), as the registration-time
            # check saw it: c-ares answers ::1 too (RFC 6761), which an allow-list of 127.0.0.1 lacks.
            return await self._loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        nameservers = tuple(settings.WEBHOOK_NAMESERVERS)
        resolver = self._resolvers.get(nameservers)
        if resolver is None:
            resolver = self._resolvers[nameservers] = aiodns.DNSResolver(
                nameservers=list(nameservers) or None, timeout=DNS_TIMEOUT, tries=DNS_TRIES
            )
        try:
            result = await resolver.getaddrinfo(host, port=port, type=socket.SOCK_STREAM)
        except aiodns.error.DNSError as exc:
            raise OSError(f"cannot resolve {host}: {exc.args[-1] if exc.args else exc}") from None
        return [
            (node.family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (node.addr[0].decode(), *node.addr[1:]))
            for node in result.nodes
        ]

    def submit(self, request: Request) -> "Future[Outcome]":
        """Start the attempt on the client's loop; the future never raises for HTTP trouble."""
        return asyncio.run_coroutine_threadsafe(self.attempt(request), self._loop)

    def start(self, requests: Sequence[Request], on_done: "Callable[[int, Outcome], None]") -> "Started":
        """Start attempts without waiting: `on_done(index, outcome)` runs on the client's loop as each ends.

        One hand-over for the whole group (a sender starts dozens at once): one
        wake-up of the loop instead of one future and one wake-up per request.
        """
        started = Started(self._loop)
        if requests:
            self._loop.call_soon_threadsafe(self._start, list(requests), on_done, started)
        return started

    def _start(self, requests: list[Request], on_done: "Callable[[int, Outcome], None]", started: "Started") -> None:
        for index, request in enumerate(requests):
            started.add(self._loop.create_task(self._attempt_reporting(index, request, on_done)))

    async def _attempt_reporting(self, index: int, request: Request, on_done) -> None:
        try:
            outcome = await self.attempt(request)
        except Exception as exc:  # noqa: BLE001 - a bug here is this attempt's failure, not the loop's
            log.exception("outbound attempt failed")
            outcome = Outcome(error=f"internal error: {exc!r}")
        on_done(index, outcome)

    def send(self, request: Request) -> Outcome:
        """One attempt, waiting for it."""
        return self.submit(request).result()

    async def attempt(self, request: Request) -> Outcome:
        limit = int(getattr(settings, "WEBHOOK_RESPONSE_BODY_LIMIT", 16 * 1024))
        started = time.monotonic()
        outcome = Outcome()
        try:
            async with asyncio.timeout(request.timeout):
                response = await self._pool.post(
                    request.url, request.wire_headers(), request.body, limit,
                    policy=tuple(settings.WEBHOOK_ALLOWED_HOSTS),
                )
            outcome.status = response.status
            outcome.headers = response.headers
            outcome.retry_after = next((v for k, v in response.headers.items() if k.lower() == "retry-after"), None)
            outcome.body = response_text(response.body)
            if response.error:
                outcome.error = f"error reading the response body: {response.error}"
        except TimeoutError:
            outcome.error = f"timeout after {request.timeout:g}s"
            outcome.unreachable = True
        except safe_http.UnsafeURL as exc:
            outcome.error = f"blocked: {exc}"
        except http1.InvalidRequest as exc:
            outcome.error = f"invalid request: {exc}"
        except (OSError, UnicodeError) as exc:  # refused, reset, unresolvable, TLS, lost (http1.ConnectionLost)
            outcome.error = f"connection error: {exc or type(exc).__name__}"
            outcome.unreachable = True
        outcome.duration_ms = int((time.monotonic() - started) * 1000)
        return outcome


_client: Client | None = None
_client_pid = 0
_client_lock = threading.Lock()


class Started:
    """The attempts of one `Client.start`: `cancel()` cuts off those still running (no `on_done` for them)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._running: set[asyncio.Task] = set()

    def add(self, task: asyncio.Task) -> None:
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    def cancel(self) -> None:
        # After the group's own `_start` (the loop runs hand-overs in order).
        self._loop.call_soon_threadsafe(lambda: [task.cancel() for task in list(self._running)])


def client() -> Client:
    """This process's client (a forked worker makes its own: loops do not survive a fork)."""
    global _client, _client_pid
    with _client_lock:
        if _client is None or _client_pid != os.getpid():
            _client, _client_pid = Client(), os.getpid()
        return _client
