"""Server-Sent Events: the live event streams of the contract ("Live streams").

Async views that return a StreamingHttpResponse over an async generator, so an open
stream costs daphne a coroutine and a bounded queue, not a thread. Each stream is a
`tail.Listener`: replay from `Last-Event-ID` (or `?last_event_id=`), then live,
in id order, without gaps or duplicates.
"""

import asyncio
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace

from django.conf import settings
from django.contrib.auth import get_user
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import Resolver404, resolve
from django.views.decorators.csrf import csrf_exempt

from agentfield_site.auth import AGENT, CLIENT, Caller, caller_for, raw_key_from
from agentfield_site.lib.api import error_response

from .models import PlatformEvent
from .stream_filters import EventFilter, FilterError, parse_filters
from .tail import TERMINAL_EXECUTION_TYPES, get_tailer, run_db

RETRY_MS = 3000
EXECUTION_SCOPE = ("execution", "webhook")
NODE_SCOPE = ("node",)
MAX_EVENT_ID = 2**63 - 1  # the largest id the log's bigint column holds


# Whether a non-admin caller may follow one execution's stream; filled in by the
# executions app (which owns the answer) in its AppConfig.ready.
execution_visible_to: list[Callable[[Caller, str], bool]] = []


def _may_follow(caller: Caller, execution_id: str) -> bool:
    return caller.is_admin or (bool(execution_visible_to) and all(c(caller, execution_id) for c in execution_visible_to))


class BadStreamRequest(ValueError):
    """A request parameter a stream cannot use; becomes a 400."""


def parse_last_event_id(header: str | None, query: str | None) -> int | None:
    """The resume point: the header (what EventSource sends on reconnect) wins over the query."""
    raw = (header or "").strip() or (query or "").strip()
    if not raw:
        return None
    # isascii: str.isdigit() also passes digits such as "²" that int() refuses.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19 or int(raw) > MAX_EVENT_ID:
        raise BadStreamRequest("last_event_id must be a non-negative integer event id.")
    return int(raw)


def _caller(request: HttpRequest, raw_key: str) -> Caller | None:
    # Read the session user here, on the streams' pool, rather than through
    # request.user in the request's own thread: that thread (and its database
    # connection) would then live as long as the stream.
    return caller_for(get_user(request), raw_key)


# An open stream checks its API key again this often (at an event or a keep-alive):
# a key revoked or reissued ends the streams it opened.
RECHECK_SECONDS = 5.0


class OpenStreams:
    """The streams (SSE and sockets) a client key holds open in this process: at most STREAM_MAX_PER_KEY.

    Streams hold no request place, and each one costs the process a subscription
    on the tail and a buffer of up to STREAM_CLIENT_BUFFER events: one key must
    not open them without bound on a process every client shares. Admin keys and
    staff sessions are not counted. All on the event loop: no lock.
    """

    def __init__(self) -> None:
        self.held: dict[int, int] = {}

    def take(self, key_id: int | None) -> bool:
        """One place for `key_id`'s new stream (None: not counted); False when it holds them all."""
        if key_id is None:
            return True
        if self.held.get(key_id, 0) >= settings.STREAM_MAX_PER_KEY:
            return False
        self.held[key_id] = self.held.get(key_id, 0) + 1
        return True

    def give_back(self, key_id: int | None) -> None:
        if key_id is None or key_id not in self.held:
            return
        self.held[key_id] -= 1
        if self.held[key_id] <= 0:
            del self.held[key_id]


open_streams = OpenStreams()


def too_many_streams() -> JsonResponse:
    response = error_response(
        429, "too_many_streams",
        f"This key has {settings.STREAM_MAX_PER_KEY} event streams open on this server already "
        "(STREAM_MAX_PER_KEY); close one first.",
    )
    response["Retry-After"] = "5"
    return response


def key_recheck(request: HttpRequest) -> Callable[[], Awaitable[bool]] | None:
    """Whether the request's API key is still valid, asked again later; None for a session (checked once)."""
    raw_key = raw_key_from({k.lower(): v for k, v in request.headers.items()}, request.GET)
    if not raw_key:
        return None

    async def still_valid() -> bool:
        return await run_db(_caller, request, raw_key) is not None

    return still_valid


async def authorize(request: HttpRequest) -> Caller | JsonResponse:
    """The caller when it may read streams, else the contract's 401."""
    headers = {k.lower(): v for k, v in request.headers.items()}
    raw_key = raw_key_from(headers, request.GET)
    caller = await run_db(_caller, request, raw_key)
    if caller is not None:
        return caller
    return error_response(
        401,
        "unauthorized",
        "A valid API key is required: send X-API-Key, Authorization: Bearer, or ?api_key=.",
    )


def _sse_response(body: AsyncIterator[bytes]) -> StreamingHttpResponse:
    response = StreamingHttpResponse(body, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    # Proxies such as nginx would otherwise buffer the stream until it ends.
    response["X-Accel-Buffering"] = "no"
    return response


def _held_stream(body: AsyncIterator[bytes], key_id: int | None) -> AsyncIterator[bytes]:
    """`body`, holding one of `key_id`'s stream places until it ends, or is dropped without ever starting."""
    released = False

    def give_back() -> None:
        nonlocal released
        if not released:
            released = True
            open_streams.give_back(key_id)

    async def held() -> AsyncIterator[bytes]:
        try:
            async for chunk in body:
                yield chunk
        finally:
            give_back()
            await body.aclose()  # its subscription goes now, not when the collector finds it

    stream = held()
    weakref.finalize(stream, give_back)  # a response closed before its body started
    return stream


async def _events(
    flt: EventFilter, last_event_id: int | None, *, until_terminal: bool = False, announce_gaps: bool = True,
    still_valid: Callable[[], Awaitable[bool]] | None = None,
) -> AsyncIterator[bytes]:
    # Subscribing inside the generator ties the subscription's life to the body:
    # Django cancels the generator when the client goes, and `finally` lets go.
    # The first bytes follow the subscription, so a client that has read them
    # knows that every later event will reach it.
    sub = await get_tailer().subscribe(flt, last_event_id, announce_gaps=announce_gaps)
    loop = asyncio.get_running_loop()
    recheck_at = loop.time() + RECHECK_SECONDS
    try:
        yield f"retry: {RETRY_MS}\n\n".encode()
        while True:
            batch = await sub.next_events(settings.STREAM_KEEPALIVE_SECONDS)
            if still_valid is not None and loop.time() >= recheck_at:
                if not await still_valid():
                    return  # the key was revoked: the client's reconnect is then a 401
                recheck_at = loop.time() + RECHECK_SECONDS
            if not batch:
                yield b": keep-alive\n\n"
                continue
            if until_terminal:
                ends = next((i for i, event in enumerate(batch) if event.is_terminal), None)
                if ends is not None:
                    yield b"".join(event.sse for event in batch[: ends + 1])
                    return
            yield b"".join(event.sse for event in batch)
    finally:
        sub.close()


async def _open_stream(request: HttpRequest, scope: tuple[str, ...]) -> HttpResponse:
    if request.method not in ("GET", "HEAD"):
        return error_response(405, "method_not_allowed", f"{request.method} is not allowed on a stream; use GET.")
    caller = await authorize(request)
    if isinstance(caller, JsonResponse):
        return caller
    owner_id = streamed_owner(caller, scope)
    if not caller.is_admin and owner_id is None:
        return error_response(
            403, "forbidden", f"This stream needs an admin key{' or a client key' if scope == EXECUTION_SCOPE else ''}; "
            f"this key is {caller.scope}. Follow one execution on /api/v1/executions/{{id}}/events."
        )
    try:
        flt = replace(parse_filters(request.GET, sources=scope), owner_id=owner_id)
        last_event_id = parse_last_event_id(request.headers.get("Last-Event-ID"), request.GET.get("last_event_id"))
    except (FilterError, BadStreamRequest) as exc:
        return error_response(400, "bad_request", str(exc))
    if not open_streams.take(owner_id):
        return too_many_streams()
    return _sse_response(_held_stream(_events(flt, last_event_id, still_valid=key_recheck(request)), owner_id))


def streamed_owner(caller: Caller, sources: tuple[str, ...]) -> int | None:
    """The key whose executions' events alone a caller's stream carries, or None (an admin: every event).

    A client key reads the events of its own executions (and their webhooks); node
    events, and everyone else's, are for operators. Any other key gets None and is refused.
    """
    if caller.is_admin or caller.scope != CLIENT or caller.key_id is None or "node" in sources:
        return None
    return caller.key_id


@csrf_exempt  # GET only: anything else gets a JSON 405, not the CSRF page
async def execution_events(request: HttpRequest) -> HttpResponse:
    """GET /api/ui/v1/executions/events: execution and webhook events, live."""
    return await _open_stream(request, EXECUTION_SCOPE)


@csrf_exempt  # GET only: anything else gets a JSON 405, not the CSRF page
async def node_events(request: HttpRequest) -> HttpResponse:
    """GET /api/ui/v1/nodes/events: node events only."""
    return await _open_stream(request, NODE_SCOPE)


def _history(execution_id: str) -> tuple[bool, int | None]:
    """Whether the execution has events, and the id of its terminal event if it ended."""
    events = PlatformEvent.objects.filter(execution_id=execution_id)
    terminal = events.filter(type__in=TERMINAL_EXECUTION_TYPES).order_by("id").values_list("id", flat=True).first()
    return terminal is not None or events.exists(), terminal


@csrf_exempt  # GET only: anything else gets a JSON 405, not the CSRF page
async def one_execution_events(request: HttpRequest, execution_id: str) -> HttpResponse:
    """GET /api/v1/executions/{id}/events: its whole history, then live until it ends."""
    if request.method not in ("GET", "HEAD"):
        return error_response(405, "method_not_allowed", f"{request.method} is not allowed on a stream; use GET.")
    caller = await authorize(request)
    if isinstance(caller, JsonResponse):
        return caller
    if caller.scope == AGENT:
        return error_response(403, "forbidden", "Execution streams are for admin and client keys.")
    try:
        last_event_id = parse_last_event_id(request.headers.get("Last-Event-ID"), request.GET.get("last_event_id"))
    except BadStreamRequest as exc:
        return error_response(400, "bad_request", str(exc))
    unusable = len(execution_id) > 64 or "\x00" in execution_id  # PostgreSQL refuses NUL
    known, terminal_id = (False, None) if unusable else await run_db(_history, execution_id)
    if known and not await run_db(_may_follow, caller, execution_id):
        known = False  # another key's execution: as if it did not exist
    if not known:
        return error_response(404, "not_found", f"No events for execution {execution_id!r}.", error_category="not_found")
    if terminal_id is not None and last_event_id is not None and last_event_id >= terminal_id:
        # The client already has the end: 204 tells EventSource to stop reconnecting.
        return HttpResponse(status=204)
    owner_id = streamed_owner(caller, EXECUTION_SCOPE)
    if not open_streams.take(owner_id):
        return too_many_streams()
    flt = EventFilter(execution_id=execution_id, owner_id=owner_id)
    body = _events(
        flt,
        0 if last_event_id is None else last_event_id,
        until_terminal=True,
        announce_gaps=last_event_id is not None,
        still_valid=key_recheck(request),
    )
    return _sse_response(_held_stream(body, owner_id))


for _view in (execution_events, node_events, one_execution_events):
    # Streams hold no place among MAX_CONCURRENT_REQUESTS (see is_stream).
    _view.opens_stream = True


def is_stream(scope: dict) -> bool:
    """Whether an HTTP request opens an event stream: those never queue for a place."""
    if scope.get("method") != "GET" or not scope["path"].endswith("/events"):
        return False
    try:
        return getattr(resolve(scope["path"]).func, "opens_stream", False)
    except Resolver404:
        return False
