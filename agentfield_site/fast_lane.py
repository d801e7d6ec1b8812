"""The hottest API routes (heartbeats, submits, reads), answered without DRF on their common path.

Through DRF, a heartbeat spends more on content negotiation, parsers, the
authentication and permission classes, a serializer and a renderer than on its
database work. `fast_lane(view, method, answer)` is an async view that answers
the common, well-formed request itself, in one hop onto the request threads: the
`method` the answer is for, an API key in a header that is valid and in the
view's `scopes`, no query string, an Accept that admits plain JSON, and for a
POST a JSON object body that parses strictly (parsed only once the key is
known to be valid, and on the event loop only when small).
`answer(request, caller, body, **kwargs)` returns `(status, data)`, or None to
leave the request to `view`.

`remembered(caller, body, **kwargs)`, if given, is an answer made from memory,
with no statement and no thread hop, or None to go on as above. Under daphne
`MemoryLane` (in `asgi.py`, before Django) tries it on the event loop for a
caller whose key this process remembers (`auth.remembered_key`): a heartbeat,
every 2 s from every agent, then costs the server's HTTP parsing and little
more, not Django's request cycle (about 1 ms of CPU, as much as the rest of the
request). Its answer carries the headers Django's middleware gave this route's
last answer in this process for the same request facts (`_learning_key`), in
Django's order: the answer Django would have given, but for the time in it.

Everything else goes to the DRF `view` as before: no key or a session, a bad key,
another scope, a body that does not parse, and any input the service refuses
(`answer` returns None, or the service refuses before it writes: `ApiError` or a
domain error the API translates). DRF
then gives exactly the answer it always gave; the fast path answers only what the
DRF view would have answered with success, with the same body and headers.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import OperationalError
from django.http import HttpRequest, HttpResponse
from django.http.request import RawPostDataException, UnreadablePostError, split_domain_port
from django.urls import Resolver404, get_resolver, resolve

from .auth import Caller, check_key, raw_key_from, remembered_key, scopes_of
from .lib import strict_json
from .lib.api import is_refusal
from .lib.db_threads import copy_view_attributes, on_request_thread, respond
from .lib.drf_json import SafeJSONRenderer

Answer = Callable[..., tuple[int, Any] | None]
_RENDERER = SafeJSONRenderer()
_PLAIN_JSON = {"", "*/*", "application/*", "application/json"}


def _accepts_plain_json(accept: str) -> bool:
    # Parameters (`application/json; indent=4`) change how DRF renders: its view answers those.
    return any(part.strip().lower() in _PLAIN_JSON for part in accept.split(","))


def _plain_request(request: HttpRequest, method: str, kwargs: dict) -> str | None:
    """The raw key of a request the fast path may take, else None. Its body is not read here.

    An id in the path with a NUL character is DRF's to refuse (PostgreSQL cannot take one in any statement).
    """
    if request.method != method or any("\x00" in str(value) for value in kwargs.values()):
        return None
    raw = raw_key_from(
        {"x-api-key": request.headers.get("X-API-Key", ""), "authorization": request.headers.get("Authorization", "")},
        {},
    )
    if not raw or request.META.get("QUERY_STRING") or not _accepts_plain_json(request.headers.get("Accept", "")):
        return None
    if request.method == "POST" and request.content_type != "application/json":
        return None
    return raw


# A body the fast path does not take (not JSON, or not an object): DRF's view answers.
_REFUSED = object()
# Not parsed yet.
_UNPARSED = object()
# The largest body parsed on the event loop (a heartbeat's is under 200 bytes); a larger
# one is parsed on a request thread, where it holds up no other connection's events.
_LOOP_BODY_MAX = 16 * 1024


def _body(request: HttpRequest) -> object:
    """The request's JSON object body (None for a GET), or `_REFUSED`.

    Only for a caller whose key is valid and in scope: a body of up to MAX_BODY_BYTES
    costs up to a second to parse, and before the key was checked anyone could make
    a process spend that (on the event loop, for the heartbeat) with any made-up key.
    """
    if request.method != "POST":
        return None
    try:
        return _json(request.body)
    except (RequestDataTooBig, RawPostDataException, UnreadablePostError):
        return _REFUSED


def _json(body: bytes) -> object:
    """`body` as a JSON object, or `_REFUSED` (`_body` for bytes in hand)."""
    try:
        parsed = strict_json.loads(body)
    except strict_json.InvalidJson:
        return _REFUSED
    return parsed if isinstance(parsed, dict) else _REFUSED


def fast_lane(view: Callable[..., HttpResponse], method: str, answer: Answer, remembered: Answer | None = None) -> Callable:
    """`view` (a DRF view), with `answer` taking its plain `method` requests from callers in its scopes."""
    instance = view.cls(**view.initkwargs)
    instance.setup(None)  # as as_view() does per request: a GET view answers HEAD too
    allow = ", ".join(instance.allowed_methods)

    def in_scope_for(caller: Caller | None, request_method: str) -> bool:
        return caller is not None and (caller.is_admin or caller.scope in scopes_of(view.cls, request_method))

    def in_scope(caller: Caller | None, request: HttpRequest) -> bool:
        return in_scope_for(caller, request.method)

    def render(result: tuple[int, Any]) -> HttpResponse:
        status, data = result
        response = HttpResponse(_RENDERER.render(data), status=status, content_type="application/json")
        response["Allow"] = allow  # as DRF's view sets it (and no Vary: it has one renderer)
        return response

    def serve(request: HttpRequest, raw: str | None, body: object, kwargs: dict) -> HttpResponse:
        result = None
        if raw is not None:
            principal = check_key(raw)
            caller: Caller | None = principal.caller if principal is not None else None
            if in_scope(caller, request):
                if body is _UNPARSED:
                    body = _body(request)
                if body is not _REFUSED:
                    try:
                        result = answer(request, caller, body, **kwargs)
                    except Exception as exc:
                        if not (is_refusal(exc) or isinstance(exc, OperationalError)):
                            raise
                        result = None  # nothing was written: DRF's view answers, as it always has
        return respond(view, request, (), kwargs) if result is None else render(result)

    async def lane(request: HttpRequest, **kwargs: Any) -> HttpResponse:
        raw = _plain_request(request, method, kwargs)
        return await on_request_thread(request, serve, request, raw, _UNPARSED, kwargs)

    if remembered is not None:
        lane.from_memory = FromMemory(method, remembered, lambda caller: in_scope_for(caller, method))
        _MEMORY_METHODS.add(method)
    return copy_view_attributes(view, lane)


# --- Before Django: answers from memory --------------------------------------------

@dataclass(frozen=True)
class FromMemory:
    """What a `fast_lane` route answers from memory (`remembered`), for `MemoryLane`."""

    method: str
    answer: Answer  # (caller, body, **kwargs) -> (status, data) | None
    in_scope: Callable[[Caller | None], bool]


# The methods of the routes that answer from memory: any other request passes the lane untouched.
_MEMORY_METHODS: set[str] = set()

# Response headers `MemoryLane` learned, at most this many sets (one per route and
# request facts); past that the oldest goes, and is learned again from Django if needed.
_LEARNED_MAX = 64
# (route, scheme, host, proxy headers) -> the headers of Django's last 200 for it, this process.
_learned: dict[tuple, list[tuple[bytes, bytes]]] = {}
_NOT_LEARNED = (b"set-cookie", b"date")
_LENGTH = b"content-length"


class MemoryLane:
    """ASGI, before Django: a `fast_lane` route's answer from memory, on the event loop.

    Only for a request the fast lane itself would take (`_plain_request`: the
    route's method, a key in a header, no query string, plain JSON) whose key this
    process remembers and whose scope the route admits, with a body of at most
    `_LOOP_BODY_MAX` bytes (and MAX_BODY_BYTES) that parses strictly as a JSON
    object, and only once Django has answered this route with a 200 in this
    process for the same request facts (`_learning_key`): the answer takes that
    response's headers, so the middleware's headers, and its checks of the Host
    and the scheme, are Django's own. Anything else goes to Django, with the body
    this lane read handed on.
    """

    def __init__(self, app) -> None:
        self.app = app
        get_resolver().url_patterns  # noqa: B018 (the URLconf imported: its routes named their `_MEMORY_METHODS`)

    async def __call__(self, scope, receive, send) -> None:
        route = self._route(scope)
        if route is None:
            await self.app(scope, receive, send)
            return
        from_memory, kwargs, key = route
        raw = _plain_key(scope, from_memory)
        if raw is None:  # not a request the fast lane takes: nothing to answer, nothing to learn from
            await self.app(scope, receive, send)
            return
        learned = _learned.get(key)
        caller = remembered_key(raw) if learned is not None else None
        if not from_memory.in_scope(caller):
            await self.app(scope, receive, self._learning(key, send))
            return
        messages, body = await _read_small_body(receive)
        result = None
        if body is not None and (parsed := _json(body)) is not _REFUSED:
            result = from_memory.answer(caller, parsed, **kwargs)
        if result is None:
            await self.app(scope, _replaying(messages, receive), self._learning(key, send))
            return
        status, data = result
        content = _RENDERER.render(data)
        length = str(len(content)).encode()
        # In Django's order, with this body's length where Django put its own.
        headers = [(name, length if name.lower() == _LENGTH else value) for name, value in learned]
        if all(name.lower() != _LENGTH for name, _ in learned):
            headers.append((b"Content-Length", length))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    def _route(self, scope) -> tuple[FromMemory, dict, tuple] | None:
        """The route's `FromMemory`, path arguments and `_learning_key`, if it has one and the fast lane would take the request."""
        if (
            scope["type"] != "http" or scope["method"] not in _MEMORY_METHODS
            or scope.get("query_string") or scope.get("root_path")
            or settings.DISALLOWED_USER_AGENTS  # CommonMiddleware's refusal by User-Agent is not in `_learning_key`
        ):
            return None
        try:
            match = resolve(scope["path"])
        except Resolver404:
            return None
        from_memory = getattr(match.func, "from_memory", None)
        if (
            from_memory is None or scope["method"] != from_memory.method or match.args
            or any("\x00" in str(value) for value in match.kwargs.values())
        ):
            return None
        return from_memory, match.kwargs, _learning_key(match.route, scope)

    def _learning(self, key: tuple, send):
        """`send`, keeping the headers of Django's 200 for `key` (not its length, a cookie or the date)."""

        async def learn(message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 200:
                headers = message.get("headers") or []
                if all(name.lower() != b"set-cookie" for name, _ in headers):
                    if key not in _learned and len(_learned) >= _LEARNED_MAX:
                        del _learned[next(iter(_learned))]
                    _learned[key] = [(n, v) for n, v in headers if n.lower() not in _NOT_LEARNED]
            await send(message)

        return learn


def _learning_key(route: str, scope) -> tuple:
    """The route, and what Django's answer for it may depend on besides: the scheme, the host
    it validates and the headers its middleware reads for a secure request, in their order.

    The host is the Host header's domain as Django validates it (its port and case change
    nothing), or the address the request came to when there is no Host header (Django then
    validates that); a value Django cannot split is kept whole, so it matches only itself.
    """
    names = set()
    if settings.USE_X_FORWARDED_HOST:
        names |= {b"x-forwarded-host", b"x-forwarded-port"}
    if settings.SECURE_PROXY_SSL_HEADER:
        names.add(settings.SECURE_PROXY_SSL_HEADER[0].removeprefix("HTTP_").replace("_", "-").lower().encode())
    hosts = [value for name, value in scope.get("headers") or [] if name == b"host"]
    if hosts:
        host = b",".join(hosts).decode("latin-1")
    else:
        server = scope.get("server") or ("", None)
        host = f"{server[0]}:{server[1]}"
    domain = split_domain_port(host)[0] or ("whole", host)
    facts = tuple((name, value) for name, value in scope.get("headers") or [] if name in names)
    return route, scope.get("scheme", "http"), domain, facts


_READ = frozenset({"x-api-key", "authorization", "accept", "content-type"})


def _plain_key(scope, from_memory: FromMemory) -> str | None:
    """The raw key of a request the fast lane takes (as `_plain_request` judges it), else None.

    None too when a header read here comes twice (Django joins them with a comma: its view answers that).
    """
    headers: dict[str, str] = {}
    for name, value in scope.get("headers") or []:
        key = name.decode("latin-1").lower()
        if key in _READ:
            if key in headers:
                return None
            headers[key] = value.decode("latin-1")
    raw = raw_key_from(headers, {})
    if not raw or not _accepts_plain_json(headers.get("accept", "")):
        return None
    if from_memory.method == "POST" and headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        return None
    return raw


async def _read_small_body(receive) -> tuple[list[dict], bytes | None]:
    """The messages read, and the body when it came whole within `_LOOP_BODY_MAX` bytes and
    MAX_BODY_BYTES (else None: Django's `BodyLimitMiddleware` refuses a body past the limit)."""
    messages: list[dict] = []
    size = 0
    limit = min(_LOOP_BODY_MAX, settings.MAX_BODY_BYTES)
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages, None
        size += len(message.get("body", b""))
        if size > limit:
            return messages, None
        if not message.get("more_body"):
            return messages, b"".join(m.get("body", b"") for m in messages)


def _replaying(messages: list[dict], receive):
    """`receive`, giving back the messages already read first."""
    pending = list(messages)

    async def replay() -> dict:
        return pending.pop(0) if pending else await receive()

    return replay
