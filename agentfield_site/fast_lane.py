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

`remembered(request, caller, body, **kwargs)`, if given, is tried first, on the
event loop under daphne, for a caller whose key this process remembers
(`auth.remembered_key`): an answer made from memory, with no statement and no
thread hop, or None to go on as above.

Everything else goes to the DRF `view` as before: no key or a session, a bad key,
another scope, a body that does not parse, and any input the service refuses
(`answer` returns None, or the service refuses before it writes: `ApiError` or a
domain error the API translates). DRF
then gives exactly the answer it always gave; the fast path answers only what the
DRF view would have answered with success, with the same body and headers.
"""

from collections.abc import Callable
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.core.handlers.asgi import ASGIRequest
from django.db import OperationalError
from django.http import HttpRequest, HttpResponse
from django.http.request import RawPostDataException, UnreadablePostError

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
        body = strict_json.loads(request.body)
    except (strict_json.InvalidJson, RequestDataTooBig, RawPostDataException, UnreadablePostError):
        return _REFUSED
    return body if isinstance(body, dict) else _REFUSED


def fast_lane(view: Callable[..., HttpResponse], method: str, answer: Answer, remembered: Answer | None = None) -> Callable:
    """`view` (a DRF view), with `answer` taking its plain `method` requests from callers in its scopes."""
    instance = view.cls(**view.initkwargs)
    instance.setup(None)  # as as_view() does per request: a GET view answers HEAD too
    allow = ", ".join(instance.allowed_methods)

    def in_scope(caller: Caller | None, request: HttpRequest) -> bool:
        return caller is not None and (caller.is_admin or caller.scope in scopes_of(view.cls, request.method))

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
        body: object = _UNPARSED
        if remembered is not None and raw is not None and isinstance(request, ASGIRequest):
            caller = remembered_key(raw)
            if in_scope(caller, request) and len(request.body) <= _LOOP_BODY_MAX:
                body = _body(request)  # a remembered valid key's small body: read on the loop
                if body is not _REFUSED:
                    result = remembered(request, caller, body, **kwargs)
                    if result is not None:
                        return render(result)
        return await on_request_thread(request, serve, request, raw, body, kwargs)

    return copy_view_attributes(view, lane)
