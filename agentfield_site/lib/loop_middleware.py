"""Django's middleware, run on the event loop instead of a thread hop per hook.

Under ASGI, Django calls each `MiddlewareMixin` hook (`process_request`,
`process_view`, `process_response`) through `sync_to_async`: a thread hop each,
about fifteen for one API request through the stack in `settings.MIDDLEWARE`,
more than the view costs. The hooks of these classes do no blocking I/O (they read
headers and cookies, set headers, build lazy objects), so here they run inline on
the loop. The two that may touch the database still hop, but only when they must:
the session when it is to be saved, the messages when some were used or added.

`settings.MIDDLEWARE` keeps Django's names (its system checks look for them by
name); `LoopASGIHandler` loads these subclasses in their place. Under WSGI (the
test client, a WSGI server) Django's own classes run.
"""

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.contrib.auth import middleware as auth
from django.contrib.messages import middleware as messages
from django.contrib.sessions import middleware as sessions
from django.core.handlers.asgi import ASGIHandler
from django.middleware import clickjacking, common, csrf, security
from whitenoise import middleware as whitenoise

from .db_threads import handler_hops, on_request_thread, request_hops, respond


class HooksOnTheLoop:
    """Mixin for a `MiddlewareMixin` whose hooks never block: run them inline when async."""

    def __init__(self, get_response) -> None:
        super().__init__(get_response)
        if self.async_mode and hasattr(self, "process_view"):
            hook = self.process_view

            # Django adapts a sync `process_view` with a thread hop; a coroutine it awaits.
            async def process_view(request, view, args, kwargs):
                return hook(request, view, args, kwargs)

            self.process_view = process_view

    def needs_thread(self, request, response) -> bool:
        """Whether `process_response` may block for this response (then it runs in a thread)."""
        return False

    async def __acall__(self, request):
        response = None
        if hasattr(self, "process_request"):
            response = self.process_request(request)
        response = response or await self.get_response(request)
        if hasattr(self, "process_response"):
            if self.needs_thread(request, response):
                # On the request pool, which hands back the connection it used.
                return await on_request_thread(request, self.process_response, request, response)
            response = self.process_response(request, response)
        return response


class SecurityMiddleware(HooksOnTheLoop, security.SecurityMiddleware):
    pass


class CommonMiddleware(HooksOnTheLoop, common.CommonMiddleware):
    pass


class CsrfViewMiddleware(HooksOnTheLoop, csrf.CsrfViewMiddleware):
    # Under ASGI the body is already in memory (bodies are at most MAX_BODY_BYTES)
    # when process_view reads a form's token from it.
    pass


class AuthenticationMiddleware(HooksOnTheLoop, auth.AuthenticationMiddleware):
    # request.user is lazy: the session and the user are read where it is used.
    pass


class XFrameOptionsMiddleware(HooksOnTheLoop, clickjacking.XFrameOptionsMiddleware):
    pass


class SessionMiddleware(HooksOnTheLoop, sessions.SessionMiddleware):
    def needs_thread(self, request, response) -> bool:
        session = getattr(request, "session", None)
        return session is not None and (session.modified or settings.SESSION_SAVE_EVERY_REQUEST)


class MessageMiddleware(HooksOnTheLoop, messages.MessageMiddleware):
    def needs_thread(self, request, response) -> bool:
        storage = getattr(request, "_messages", None)
        # Storing may fall back to the session, which may have to be read first.
        return storage is not None and (storage.used or storage.added_new)


class WhiteNoiseMiddleware(whitenoise.WhiteNoiseMiddleware):
    """Static files as WhiteNoise serves them; any other path passes through on the loop."""

    async_capable = True

    def __init__(self, get_response=None, settings=settings) -> None:
        super().__init__(get_response, settings)
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self.async_mode:
            return self._acall(request)
        return super().__call__(request)

    async def _acall(self, request):
        if self.autorefresh:
            static_file = await sync_to_async(self.find_file, thread_sensitive=True)(request.path_info)
        else:
            static_file = self.files.get(request.path_info)
        if static_file is None:
            return await self.get_response(request)
        return await sync_to_async(self.serve, thread_sensitive=True)(static_file, request)


# What the authentication and messages middleware hang on a request, each holding the
# request in turn (a closure, a partial, a storage): a cycle per request.
_CYCLIC = ("user", "auser", "_cached_user", "_messages")


def _untie(request) -> None:
    """Break the request's cycles once its response has passed every middleware.

    Otherwise each request (with its session, headers, resolver match: some sixty
    objects) waits for the cyclic collector, whose full passes hold the event
    loop. Only for a response that is complete: a streaming view's body may still
    read the request.
    """
    for name in _CYCLIC:
        request.__dict__.pop(name, None)


# Django's (and WhiteNoise's) class -> the subclass that runs on the loop.
ON_THE_LOOP = {
    "django.middleware.security.SecurityMiddleware": SecurityMiddleware,
    "whitenoise.middleware.WhiteNoiseMiddleware": WhiteNoiseMiddleware,
    "django.contrib.sessions.middleware.SessionMiddleware": SessionMiddleware,
    "django.middleware.common.CommonMiddleware": CommonMiddleware,
    "django.middleware.csrf.CsrfViewMiddleware": CsrfViewMiddleware,
    "django.contrib.auth.middleware.AuthenticationMiddleware": AuthenticationMiddleware,
    "django.contrib.messages.middleware.MessageMiddleware": MessageMiddleware,
    "django.middleware.clickjacking.XFrameOptionsMiddleware": XFrameOptionsMiddleware,
}


class LoopASGIHandler(ASGIHandler):
    """Django's ASGI handler, loading `settings.MIDDLEWARE` with the subclasses above in place.

    And without a thread made and joined for every request: the handler's own
    bookkeeping (the request signals, `response.close`) runs inline on the loop
    (`db_threads.handler_hops`), and the thread-sensitive calls of views,
    middleware and the sending of a streaming body on long-lived threads
    (`db_threads.request_hops`). A synchronous
    view runs on the request pool, through `on_request_thread`, which opens and
    closes its connections itself, as the API's views already do; so does a
    session or message save.
    """

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        async with handler_hops():
            await self.handle(scope, receive, send)

    async def listen_for_disconnect(self, receive) -> None:
        """Django's, but ending on a disconnect instead of raising `RequestAborted`.

        Daphne sends `http.disconnect` once a response is complete, so under Django's
        own every request ended with that exception: its traceback holds the
        handler's frame, which holds the task, which holds the exception. The cycle
        kept each request's whole graph (the request, its session and messages, the
        response: over a hundred objects) for the cyclic collector, whose full
        passes then held the event loop for 30-65 ms every two seconds under load.
        `handle` treats a listener that ended either way alike.
        """
        message = await receive()
        if message["type"] != "http.disconnect":
            raise AssertionError(f"Invalid ASGI message after request body: {message['type']}")

    async def get_response_async(self, request):
        async with request_hops():
            response = await super().get_response_async(request)
        if not response.streaming:
            _untie(request)
        return response

    async def send_response(self, response, send):
        # Django reads a streaming body from a synchronous iterator (a static
        # file) through a thread-sensitive call: a pool thread, not the loop.
        async with request_hops():
            await super().send_response(response, send)

    def make_view_atomic(self, view):
        view = super().make_view_atomic(view)
        if iscoroutinefunction(view):
            return view

        async def on_pool(request, *args, **kwargs):
            return await on_request_thread(request, respond, view, request, args, kwargs)

        return on_pool

    def load_middleware(self, is_async: bool = False) -> None:
        configured = settings.MIDDLEWARE
        settings.MIDDLEWARE = [
            f"{__name__}.{ON_THE_LOOP[path].__name__}" if path in ON_THE_LOOP else path for path in configured
        ]
        try:
            super().load_middleware(is_async)
        finally:
            settings.MIDDLEWARE = configured
