"""What daphne itself refuses, answered as the API answers: JSON under /api/.

Some requests never reach the application: daphne answers a header value with
a control character in it (and its own failures, 500 and 503) with an HTML page;
under /api/ that is now the API's JSON error body. (Twisted refuses what it
cannot parse at all, a path or header that is not ASCII or a NUL, with a bare
400 before daphne sees it.) And
Twisted, under daphne, parsed every POSTed form into arguments daphne never
reads (it hands the application the body as it came), answering a multipart body
it could not parse with a bare 400 and no body at all; the application now gets
such a body like any other (the API answers 415: it takes JSON).

A body larger than MAX_BODY_BYTES is refused here, with the API's JSON 413, as
soon as its Content-Length is known (or, chunked, as soon as it passes the limit).
Twisted used to read a body whole, whatever its size, spooling it to a temporary
file and then into the application's memory, before Django's `BodyLimitMiddleware`
could refuse it: a caller with no key could make a web process hold 2 GiB (and as
much disk) with one request. The rest of a refused body is read and dropped for up
to LINGER_SECONDS, then the connection closes: a client that sends its whole body
before it reads the answer (most do) gets the 413, not a reset connection. And a
body must arrive whole within REQUEST_BODY_TIMEOUT, else a 408 closes the connection:
Twisted's idle timeout restarts with every byte, so a body sent a byte at a time
held its connection for as long as its sender liked. The headers likewise must
end within REQUEST_HEADERS_TIMEOUT of the request's first line (a header sent a
byte every 20 s held its connection, with no key, for as long as the sender liked).

A HEAD request gets the headers and nothing after them. daphne writes every body
chunk with the class's `http.Request.write`, past the guard Twisted puts on the
instance once the headers are out: a streamed answer (the node list, an event
stream) went on sending its body after a HEAD's headers, so the next response on
that keep-alive connection began in the middle of it (a client saw another
request's data as its status line), and an event stream never ended. The first
body message of a HEAD ends the response, which also tells the application the
client is gone.

`asgi.py` calls `install()`, so every way of starting daphne uses this request class.
"""

import json
from io import BytesIO

from daphne import http_protocol
from django.conf import settings
from twisted.internet import reactor

# How long the rest of a refused body is read (and dropped) before the connection closes.
LINGER_SECONDS = 30.0

# daphne's statuses, in the API's words for them.
_ERRORS = {400: "bad_request", 500: "internal_error", 503: "unavailable"}


class WebRequest(http_protocol.WebRequest):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._parsePOSTFormSubmission = False  # Twisted's switch for that parsing
        self._answered_early = False
        self._body_read = 0
        # The headers' deadline, then the body's, or how long a refused body is drained.
        # Twisted makes the request on its first line.
        # (0 or less: no deadline for the headers.)
        self._timer = (reactor.callLater(settings.REQUEST_HEADERS_TIMEOUT, self._headers_too_slow)
                       if settings.REQUEST_HEADERS_TIMEOUT > 0 else None)

    def handle_reply(self, message) -> None:
        # (Not an answer given before the body was in: that one drains the body, then ends.)
        if self.method == b"HEAD" and message.get("type") == "http.response.body" and not self._answered_early:
            message = {**message, "body": b"", "more_body": False}
        super().handle_reply(message)

    def basic_error(self, status, status_text, body) -> None:
        if not (self.path == b"/api" or self.path.startswith(b"/api/")):
            return super().basic_error(status, status_text, body)
        self._json_error(status, _ERRORS.get(status, "error"), f"{body.rstrip('.')}.")

    def _json_error(self, status: int, error: str, message: str, finish: bool = True) -> None:
        content = json.dumps({"error": error, "message": message}).encode()
        self.handle_reply({
            "type": "http.response.start",
            "status": status,
            "headers": [(b"Content-Type", b"application/json"), (b"Content-Length", str(len(content)).encode())],
        })
        self.handle_reply({"type": "http.response.body", "body": content, "more_body": not finish})

    def gotLength(self, length: int | None) -> None:
        if self._timer is not None and self._timer.active():  # the headers are in
            self._timer.cancel()
        # Twisted spools a body of 100 kB or more to a temporary file it makes here.
        if length is not None and length > settings.MAX_BODY_BYTES:
            self.content = BytesIO()
            self._refuse_too_large()
            return
        super().gotLength(length)
        if length != 0:  # a body to wait for
            self._timer = reactor.callLater(settings.REQUEST_BODY_TIMEOUT, self._body_too_slow)

    def handleContentChunk(self, data: bytes) -> None:
        if self._answered_early:
            return  # dropped
        self._body_read += len(data)
        if self._body_read > settings.MAX_BODY_BYTES:  # a chunked body, past the limit
            self.content = BytesIO()
            self._refuse_too_large()
        else:
            super().handleContentChunk(data)

    def _refuse_too_large(self) -> None:
        """Answer 413 now; drop the rest of the body until it ends or LINGER_SECONDS pass, then close."""
        self._answer_early(413, "payload_too_large", f"The body is larger than {settings.MAX_BODY_BYTES} bytes.")
        self._timer = reactor.callLater(LINGER_SECONDS, self._end_early)

    def _headers_too_slow(self) -> None:
        """Answer 408 and close: the headers did not end within REQUEST_HEADERS_TIMEOUT seconds."""
        self._answer_early(
            408, "request_timeout", f"The headers did not arrive within {settings.REQUEST_HEADERS_TIMEOUT:g} s."
        )
        self._end_early()

    def _body_too_slow(self) -> None:
        """Answer 408 and close: the body did not arrive in REQUEST_BODY_TIMEOUT seconds."""
        self._answer_early(408, "request_timeout", f"The body did not arrive within {settings.REQUEST_BODY_TIMEOUT:g} s.")
        self._end_early()

    def _answer_early(self, status: int, error: str, message: str) -> None:
        """Answer before the body is in: the request is never handed to the application."""
        self._answered_early = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        channel = self.channel
        # What Twisted sets only once the body is in (`requestReceived`), for the answer and its log line.
        self.method, self.uri, self.clientproto = channel._command, channel._path, channel._version
        self.path = self.uri.split(b"?", 1)[0]
        peer = channel.transport.getPeer()
        self.client_addr = [str(getattr(peer, "host", "")), getattr(peer, "port", 0)]
        # Twisted would send "100 Continue" after the headers, that is after this answer.
        self.requestHeaders.removeHeader(b"Expect")
        # Not persistent: the end of this request closes the connection.
        channel.persistent = False
        self._json_error(status, error, message, finish=False)
        # Its access line now, as daphne writes one for a finished answer: the client may hang up first.
        self.server.log_action("http", "complete", {
            "path": self.uri.decode("ascii", "replace"), "status": self.code, "method": self.method.decode("ascii", "replace"),
            "client": f"{self.client_addr[0]}:{self.client_addr[1]}", "time_taken": 0, "size": self.sentLength,
        })

    def requestReceived(self, command, path, version) -> None:
        if self._answered_early:  # the body has ended after its answer
            self._end_early()
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        super().requestReceived(command, path, version)

    def _end_early(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        channel = self.channel
        if not self.finished and channel is not None:
            self.finish()  # the answer is out already; this closes the connection
            # What arrives before the close stays in the channel's buffer, never decoded.
            channel._handlingRequest = True

    def connectionLost(self, reason) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        super().connectionLost(reason)


def install() -> None:
    # daphne's factory names the class when it builds each connection's protocol.
    http_protocol.WebRequest = WebRequest
