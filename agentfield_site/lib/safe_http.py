"""The address guard for URLs the platform is told to call, and a guarded `requests` session: no SSRF, no redirects.

The address check happens when the socket connects, on the addresses actually
resolved then, so a name that resolved to a public address at registration and to
169.254.169.254 later (DNS rebinding) is still refused. The connection goes to the
checked IP while Host and TLS SNI keep the hostname.

An allow-list says what a deployment trusts beyond public addresses. Its entries
are host names (trusted as spelled: the address check is skipped for them) or IP
addresses and networks (`127.0.0.0/8`, `::1`), matched against the *resolved*
address, so `http://0x7f000001/` is judged as the 127.0.0.1 it reaches, whatever
its spelling. Webhooks and collectors use `settings.WEBHOOK_ALLOWED_HOSTS` (tests
and the demo allow loopback that way); calls to agents pass
`settings.AGENT_ALLOWED_HOSTS` (loopback by default). Webhooks and the collector
send through `outbound` (asyncio), which applies the same checks in its resolver;
agents are called with `new_session(allowed_hosts=...)`, each call inside
`deadline()`, which bounds the whole exchange (a read timeout bounds one read).
"""

import contextlib
import ipaddress
import re
import socket
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from urllib.parse import urlsplit

import certifi
import requests
from django.conf import settings
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util import connection as urllib3_connection
from urllib3.util.retry import Retry

from .http1 import ascii_hostname

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class UnsafeURL(ValueError):
    """The URL may not be called: bad scheme, credentials, or a blocked address."""


class BlockedAddress(UnsafeURL):
    """The URL's host is, or resolves to, an address outside the public internet that no allow-list admits."""


def _normal_host(host: str) -> str:
    return host.strip("[]").rstrip(".").lower()


def _entries(allowed_hosts: Iterable[str] | None) -> list[str]:
    if allowed_hosts is None:
        allowed_hosts = getattr(settings, "WEBHOOK_ALLOWED_HOSTS", [])
    return [_normal_host(h) for h in allowed_hosts if h and h.strip()]


def _networks(allowed_hosts: Iterable[str] | None) -> list[IPNetwork]:
    networks = []
    for entry in _entries(allowed_hosts):
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            continue  # a host name
    return networks


def is_allowed_host(host: str, allowed_hosts: Iterable[str] | None = None) -> bool:
    """True for a host name listed in the allow-list (exempt from the address check).

    `allowed_hosts` defaults to WEBHOOK_ALLOWED_HOSTS. Address entries are not
    matched here but against resolved addresses (`is_allowed_address`).
    """
    return _normal_host(host) in set(_entries(allowed_hosts))


def is_allowed_address(ip: IPAddress, allowed_hosts: Iterable[str] | None = None) -> bool:
    """True when a resolved address lies in one of the allow-list's addresses or networks."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in _networks(allowed_hosts))


# IANA's special-purpose blocks that are not public unicast, listed here rather than
# left to `ipaddress`: its tables change between Python releases (before 3.11.10 and
# 3.12.4, 192.0.0.0/24 counted as global, and 192.0.0.192 was a cloud's metadata
# address). Whole blocks, a registry's few global exceptions in them included: nothing
# sends webhooks to an anycast relay.
_SPECIAL_PURPOSE = tuple(ipaddress.ip_network(block) for block in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15",
    "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
    "::/128", "::1/128", "64:ff9b:1::/48", "100::/64", "2001::/23", "2001:db8::/32", "3fff::/20",
    "5f00::/16", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
))


def blocked_reason(ip: IPAddress) -> str | None:
    """Why an address may not be called, or None when it is a public unicast address."""
    embedded = None
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if ip in ipaddress.IPv6Network("64:ff9b::/96"):  # NAT64 carries an IPv4 address
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if embedded is not None:
        reason = blocked_reason(embedded)
        if reason:
            return f"{reason} (embedded in {ip})"
    for test, word in (
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local"),
        (ip.is_multicast, "multicast"),
        (ip.is_unspecified, "unspecified"),
        (ip.is_private, "private"),
        (ip.is_reserved, "reserved"),
    ):
        if test:
            return f"{word} address {ip}"
    # What the flags above miss: CGNAT 100.64/10, documentation and benchmarking
    # ranges and the other special-purpose blocks.
    if not ip.is_global or any(ip.version == net.version and ip in net for net in _SPECIAL_PURPOSE):
        return f"non-public address {ip}"
    return None


def _resolve(host: str, port: int) -> list[tuple]:
    # The name as the outbound client sends it (IDNA 2008), not as Python's codec would.
    return socket.getaddrinfo(ascii_hostname(host), port, type=socket.SOCK_STREAM)


# `check_url` is asked on request threads (a webhook URL at submit, a subscription,
# a node's base_url): its lookup runs on threads of its own and is waited for at
# most this long. A name server that never answers then costs a request two
# seconds, not a request thread for as long as the resolver tries; a URL not looked
# up in time is accepted, as one that does not resolve is (the connect-time check decides).
REGISTRATION_LOOKUP_WAIT = 2.0
_registration_lookups = ThreadPoolExecutor(max_workers=8, thread_name_prefix="url-lookup")


def check_resolved(host: str, infos: list[tuple], allowed_hosts: Iterable[str] | None = None) -> None:
    for info in infos:
        ip = ipaddress.ip_address(info[4][0].split("%", 1)[0])
        reason = blocked_reason(ip)
        if reason and not is_allowed_address(ip, allowed_hosts):
            raise BlockedAddress(f"{host} resolves to a blocked {reason}")


# A DNS name as resolvers take it: dot-separated labels of letters, digits, '-' and
# '_' (service and container names use it), 63 at most each; a final dot is allowed.
# A label that is a number, as an IPv4 address's parts may be spelled (decimal, octal, hex).
_NUMBER = re.compile(r"0x[0-9a-f]*|[0-9]+", re.IGNORECASE)
_HOST_NAME = re.compile(r"(?=.{1,253}\.?\Z)[A-Za-z0-9_-]{1,63}(?:\.[A-Za-z0-9_-]{1,63})*\.?")


def _host_problem(host: str) -> str | None:
    """Why `host` (not an IP address) can name no server, or None."""
    try:
        name = ascii_hostname(host)
    except UnicodeError:
        return f"{host[:80]!r} is not a valid host name"
    if not _HOST_NAME.fullmatch(name):
        return f"{host[:80]!r} is not a valid host name"
    if name.endswith(".") and _NUMBER.fullmatch(name[:-1].rsplit(".", 1)[-1]):
        # `127.1.`, `0x7f000001.`: no resolver reads it as an address, and no name ends in a number.
        return f"{host[:80]!r} ends in a number and a dot: neither an IPv4 address nor a host name"
    return None


def check_url(url: str, allowed_hosts: Iterable[str] | None = None) -> None:
    """Refuse URLs that must never be called; raise `UnsafeURL` with the reason.

    Registration-time check. A hostname that does not resolve now is accepted:
    the connect-time check stays the authority, since DNS can change anyway.
    `allowed_hosts` defaults to WEBHOOK_ALLOWED_HOSTS.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeURL(f"not a valid URL: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise UnsafeURL("the URL scheme must be http or https")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise UnsafeURL("credentials are not allowed in the URL")
    host = parts.hostname
    if not host:
        raise UnsafeURL("the URL has no host")
    if port == 0:
        raise UnsafeURL("port 0 is not a port anything listens on")
    try:
        ip = ipaddress.ip_address(_normal_host(host))
    except ValueError:
        ip = None
    if ip is None and not parts.netloc.startswith("[") and (problem := _host_problem(host)):
        # Spaces, '%', empty labels: stored, it would only ever fail as "cannot resolve".
        raise UnsafeURL(problem)
    if is_allowed_host(host, allowed_hosts):
        return
    if ip is not None:
        reason = blocked_reason(ip)
        if reason and not is_allowed_address(ip, allowed_hosts):
            raise BlockedAddress(f"blocked {reason}")
        return
    lookup = _registration_lookups.submit(_resolve, host, port or (443 if parts.scheme == "https" else 80))
    try:
        infos = lookup.result(timeout=REGISTRATION_LOOKUP_WAIT)
    except (socket.gaierror, UnicodeError, FutureTimeout):
        return
    check_resolved(host, infos, allowed_hosts)


class _GuardedConnectionMixin:
    """Resolve, check every address, then connect to a checked one."""

    # None: WEBHOOK_ALLOWED_HOSTS, read at connect time. A session for agents
    # carries its own list (see `new_session`).
    allowed_hosts: tuple[str, ...] | None = None

    def _new_conn(self) -> socket.socket:
        sock = self._new_checked_conn()
        if (watch := getattr(_deadlines, "current", None)) is not None:
            watch.add(sock)
        return sock

    def _new_checked_conn(self) -> socket.socket:
        host = self._dns_host
        if is_allowed_host(self.host, self.allowed_hosts):
            candidates = None
        else:
            try:
                infos = _resolve(host, self.port)
            except socket.gaierror as exc:
                raise NameResolutionError(self.host, self, exc) from exc
            check_resolved(self.host, infos, self.allowed_hosts)
            candidates = [info[4][0] for info in infos]
        targets = candidates or [host]
        last_error: OSError | None = None
        for target in targets:
            try:
                return urllib3_connection.create_connection(
                    (target, self.port),
                    self.timeout,
                    source_address=self.source_address,
                    socket_options=self.socket_options,
                )
            except TimeoutError as exc:
                raise ConnectTimeoutError(
                    self, f"Connection to {self.host} timed out. (connect timeout={self.timeout})"
                ) from exc
            except OSError as exc:
                last_error = exc
        raise NewConnectionError(self, f"Failed to establish a new connection: {last_error}")


class GuardedHTTPConnection(_GuardedConnectionMixin, HTTPConnection):
    pass


class GuardedHTTPSConnection(_GuardedConnectionMixin, HTTPSConnection):
    pass


class _WatchedPoolMixin:
    """A connection taken from the pool inside `deadline()` is cut when the deadline passes."""

    def _get_conn(self, timeout=None):
        conn = super()._get_conn(timeout)
        if (watch := getattr(_deadlines, "current", None)) is not None:
            watch.add(conn)
        return conn


class GuardedHTTPConnectionPool(_WatchedPoolMixin, HTTPConnectionPool):
    ConnectionCls = GuardedHTTPConnection


class GuardedHTTPSConnectionPool(_WatchedPoolMixin, HTTPSConnectionPool):
    ConnectionCls = GuardedHTTPSConnection


_deadlines = threading.local()


class Deadline:
    """The connections (and new sockets) a thread used inside `deadline()`; `expired` once it cut them."""

    def __init__(self) -> None:
        self.expired = False
        self._over = False
        self._held: list = []
        self._lock = threading.Lock()

    def add(self, held) -> None:
        with self._lock:
            self._held.append(held)
            if self.expired:
                _cut(held)

    def expire(self) -> None:
        with self._lock:
            if self._over:
                return
            self.expired = True
            for held in self._held:
                _cut(held)

    def end(self) -> None:
        with self._lock:
            self._over = True


def _cut(held) -> None:
    """Shut a socket (or a connection's socket) down: a read blocked on it returns at once."""
    sock = held if isinstance(held, socket.socket) else getattr(held, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[Deadline]:
    """Cut the connections this thread uses in the block once `seconds` have passed.

    requests' read timeout bounds each read from the socket, not the exchange: a
    server that sends a byte every few seconds (its head or its body) never meets
    it. This bounds the whole of it; what was blocked fails as a broken
    connection, and the yielded `Deadline.expired` says that it was the deadline.
    """
    watch = Deadline()
    previous = getattr(_deadlines, "current", None)
    timer = threading.Timer(seconds, watch.expire)
    timer.daemon = True
    _deadlines.current = watch
    try:
        timer.start()
        yield watch
    finally:
        watch.end()
        timer.cancel()
        _deadlines.current = previous


def _pool_classes(allowed_hosts: tuple[str, ...] | None) -> dict[str, type]:
    if allowed_hosts is None:
        return {"http": GuardedHTTPConnectionPool, "https": GuardedHTTPSConnectionPool}
    fixed = {"allowed_hosts": allowed_hosts}
    return {
        "http": type("AllowListHTTPConnectionPool", (GuardedHTTPConnectionPool,), {
            "ConnectionCls": type("AllowListHTTPConnection", (GuardedHTTPConnection,), fixed)}),
        "https": type("AllowListHTTPSConnectionPool", (GuardedHTTPSConnectionPool,), {
            "ConnectionCls": type("AllowListHTTPSConnection", (GuardedHTTPSConnection,), fixed)}),
    }


class GuardedAdapter(HTTPAdapter):
    """A keep-alive pooled adapter whose connections check addresses at connect time."""

    def __init__(self, *args, allowed_hosts: Iterable[str] | None = None, **kwargs) -> None:
        self.allowed_hosts = None if allowed_hosts is None else tuple(allowed_hosts)
        super().__init__(*args, **kwargs)

    def init_poolmanager(self, *args, **kwargs) -> None:
        # `post` uses this pool directly: verify TLS against the same CA bundle requests uses.
        kwargs.setdefault("cert_reqs", "CERT_REQUIRED")
        kwargs.setdefault("ca_certs", certifi.where())
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _pool_classes(getattr(self, "allowed_hosts", None))


class GuardedSession(requests.Session):
    """A session that never follows redirects, whatever a caller asks."""

    def send(self, request, **kwargs):
        kwargs["allow_redirects"] = False
        return super().send(request, **kwargs)


def new_session(
    pool_size: int | None = None, allowed_hosts: Iterable[str] | None = None, max_retries: int | Retry = 0
) -> requests.Session:
    """A session for URLs the platform is told to call: guarded connections, pooled keep-alive, no proxies.

    `allowed_hosts` defaults to WEBHOOK_ALLOWED_HOSTS; `max_retries` as requests'
    HTTPAdapter takes it (agents get a few connect retries, deliveries none).
    """
    size = pool_size or max(int(getattr(settings, "WEBHOOK_CONCURRENCY", 10)), 10)
    session = GuardedSession()
    # Environment proxies would resolve the name themselves and bypass the check.
    session.trust_env = False
    adapter = GuardedAdapter(pool_connections=size, pool_maxsize=size, max_retries=max_retries,
                             allowed_hosts=allowed_hosts)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
