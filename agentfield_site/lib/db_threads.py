"""Running ORM code from async code on a bounded pool of long-lived threads.

Such threads live as long as the process, outside any request cycle, so nothing
closes their database connections for them: each call drops a connection that is
broken or past CONN_MAX_AGE before and after it runs, so a pool of N threads holds
at most N connections (on PostgreSQL, borrowed from and returned to Django's
connection pool at every call; on SQLite, kept open by each thread).
"""

from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any, TypeVar

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.conf import settings
from django.core.handlers.asgi import ASGIRequest
from django.db import close_old_connections
from django.http import HttpRequest, HttpResponse
from django.template.response import SimpleTemplateResponse

T = TypeVar("T")


def with_fresh_connection(fn: Callable[..., T], *args: Any) -> T:
    close_old_connections()
    try:
        return fn(*args)
    finally:
        close_old_connections()


async def run_in(pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
    """Run a synchronous (ORM) function on `pool` and await its result."""
    return await sync_to_async(with_fresh_connection, thread_sensitive=False, executor=pool)(fn, *args)


# The threads synchronous views run on under daphne. As many as requests one
# process works on at once (ConcurrencyLimit): a request never waits for a thread.
_request_pool = ThreadPoolExecutor(max_workers=settings.MAX_CONCURRENT_REQUESTS, thread_name_prefix="request")


# The thread-sensitive calls views and middleware make (`request_hops`): quick
# ones, kept apart from the request pool, whose threads may all be busy (on
# SQLite, waiting for this process's write turn).
_hop_pool = ThreadPoolExecutor(max_workers=settings.MAX_CONCURRENT_REQUESTS, thread_name_prefix="request-hop")


class _Inline(Executor):
    """Runs each call at once, in the thread that submits it (the event loop's)."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # handed to the awaiting coroutine, as a pool thread would
            future.set_exception(exc)
        return future


_inline = _Inline()


def handler_hops() -> ThreadSensitiveContext:
    """A request's context in which the ASGI handler's own thread-sensitive calls run inline on the loop.

    Those are Django's bookkeeping around a request: the `request_started` and
    `request_finished` receivers (closing this thread's old database connections
    and caches, resetting its query log and urlconf) and `response.close`. The
    loop's thread holds no connection and no cache (every view, hook and save
    that may touch one runs on the request pool, which closes its own), so they
    find nothing to do; a thread hop each would cost more than all of it.
    Views, middleware and the sending of the response run inside
    `request_hops()`, which `LoopASGIHandler` enters around them, so none of
    their calls lands here (a static file's body, for one, is read through a
    thread-sensitive call while it is sent).
    """
    return ThreadSensitiveContext(executor=_inline)


def request_hops() -> ThreadSensitiveContext:
    """The context of a request's views and middleware: their thread-sensitive calls on long-lived threads.

    Django's ASGI handler gives each request a context of its own, and with it a
    thread started at the request's first thread-sensitive call and joined at its
    end. Under a stream of small API calls that was a third of a web process's
    time. In this context such calls take a thread of a pool instead; one that
    blocks holds that thread, not anyone else's request (on asgiref's one shared
    thread, a session saved to a slow database held up every request of the
    process). Few are left: views, session and message saves go through
    `on_request_thread`; WhiteNoise's file serving, the reading of a static
    file's body while it is sent, and `request.auser()` land here.

    asgiref asks for an executor of one thread, so that a request's
    thread-sensitive calls all share one. The ones left here keep nothing between
    them: each opens and closes what it uses.
    """
    return ThreadSensitiveContext(executor=_hop_pool)


def respond(view: Callable[..., HttpResponse], request: HttpRequest, args: tuple, kwargs: dict) -> HttpResponse:
    """Call a synchronous view and hand back its response rendered."""
    response = view(request, *args, **kwargs)
    if isinstance(response, SimpleTemplateResponse):
        # Rendered here, and handed back as a plain response: Django would otherwise
        # hop to a thread again just to find it already rendered.
        response.render()
        plain = HttpResponse(response.content, status=response.status_code, reason=response.reason_phrase)
        for name, value in response.items():
            plain[name] = value
        plain.cookies = response.cookies
        return plain
    return response


async def on_request_thread(request: HttpRequest, fn: Callable[..., T], *args: Any) -> T:
    """Run `fn(*args)` for `request`: on the request pool under daphne, in the caller's thread under WSGI."""
    if isinstance(request, ASGIRequest):
        return await run_in(_request_pool, fn, *args)
    return await sync_to_async(fn, thread_sensitive=True)(*args)


def copy_view_attributes(view: Callable, to: Callable) -> Callable:
    """What Django (csrf_exempt) and drf-spectacular (cls, initkwargs) read off a view, onto `to`."""
    for name in ("__name__", "__qualname__", "__doc__", "csrf_exempt", "cls", "initkwargs"):
        if hasattr(view, name):
            setattr(to, name, getattr(view, name))
    return to


def on_request_threads(view: Callable[..., HttpResponse]) -> Callable[..., Awaitable[HttpResponse]]:
    """`view` (synchronous, e.g. a DRF view) as an async view that runs on the request pool.

    Django would run it in a thread made for each request, which opens a database
    connection of its own and closes it again; a pool thread keeps its connection
    (CONN_MAX_AGE, or PostgreSQL's pool) and costs one hop. Under the test client
    (a WSGI request) it runs in the caller's thread, as Django would run it.
    """

    async def on_pool(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        return await on_request_thread(request, respond, view, request, args, kwargs)

    return copy_view_attributes(view, on_pool)
