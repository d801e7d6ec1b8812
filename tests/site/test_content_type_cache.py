"""daphne's per-request Content-Type parse (twisted's) is memoized, and gives what twisted's own does."""

from email.message import EmailMessage

from twisted.web import http

import agentfield_site.asgi  # noqa: F401 - installs the cache, as daphne's import of the application does


def _parsed_by_email(line: bytes) -> bytes:
    message = EmailMessage()
    message["content-type"] = line.decode("charmap")
    return message.get_content_type().encode("charmap")


def test_the_parse_is_cached_and_answers_as_twisteds():
    parse = http._parseContentType
    assert parse.cache_info().maxsize == 256
    lines = [
        b"application/json", b"Application/JSON; charset=utf-8", b"multipart/form-data; boundary=abc",
        b"application/x-www-form-urlencoded", b"text/plain;charset=\xff", b"no slash here", b"", b";;;",
    ]
    for line in lines:
        assert parse(line) == _parsed_by_email(line), line
    hits = parse.cache_info().hits
    for line in lines:
        parse(line)
    assert parse.cache_info().hits == hits + len(lines)
