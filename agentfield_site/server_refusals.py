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

`asgi.py` calls `install()`, so every way of starting daphne uses this request class.
"""

import json

from daphne import http_protocol

# daphne's statuses, in the API's words for them.
_ERRORS = {400: "bad_request", 500: "internal_error", 503: "unavailable"}


class WebRequest(http_protocol.WebRequest):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._parsePOSTFormSubmission = False  # Twisted's switch for that parsing

    def basic_error(self, status, status_text, body) -> None:
        if not (self.path == b"/api" or self.path.startswith(b"/api/")):
            return super().basic_error(status, status_text, body)
        message = {"error": _ERRORS.get(status, "error"), "message": f"{body.rstrip('.')}."}
        content = json.dumps(message).encode()
        self.handle_reply({
            "type": "http.response.start",
            "status": status,
            "headers": [(b"Content-Type", b"application/json"), (b"Content-Length", str(len(content)).encode())],
        })
        self.handle_reply({"type": "http.response.body", "body": content})


def install() -> None:
    # daphne's factory names the class when it builds each connection's protocol.
    http_protocol.WebRequest = WebRequest
