"""twisted's parse of a request's Content-Type, memoized: daphne's HTTP server runs it for every request with a body.

`twisted.web.http.Request.requestReceived` reads the Content-Type of each
request that carries a body, to see whether it is a form to decode, and parses
it with the `email` package: about 40 µs a request, for the same few values
(`application/json`) over and over. Under a fleet's heartbeats that was about
7 % of a web process's GIL time (py-spy). The parse is a pure function of the
header's bytes and returns bytes, so `install()` (called from `asgi.py`, as
`access_log.install()` is) puts a bounded cache in front of it: a caller sending
ever-new values only misses the cache and pays the parse it paid before, and the
cache holds at most 256 values of at most 16 KiB each (twisted's cap on a
request's headers).
"""

import functools

from twisted.web import http


def install() -> None:
    parse = getattr(http, "_parseContentType", None)
    if parse is not None and not hasattr(parse, "cache_info"):  # a twisted without it, or installed already
        http._parseContentType = functools.lru_cache(maxsize=256)(parse)
