"""DRF's JSON parser and renderer on `strict_json` (the REST_FRAMEWORK settings name them).

Apart from `api.py`, which imports DRF's views: those read these settings at import.
"""

from rest_framework import exceptions, parsers, renderers

from . import strict_json


class StrictJSONParser(parsers.JSONParser):
    """DRF's JSON parser on `strict_json.loads`: UTF-8, no lone surrogates, bounded depth and numbers."""

    def parse(self, stream, media_type=None, parser_context=None) -> object:
        try:
            return strict_json.loads(stream.read() if stream is not None else b"")
        except strict_json.InvalidJson as exc:
            raise exceptions.ParseError(str(exc)) from None


class SafeJSONRenderer(renderers.JSONRenderer):
    """DRF's JSON renderer that escapes, instead of raising on, a bad value already stored.

    A lone surrogate or an infinite number written before the strict parser (or
    by another path) would otherwise turn every page that shows the row into a 500.
    """

    def render(self, data, accepted_media_type=None, renderer_context=None) -> bytes:
        try:
            return super().render(data, accepted_media_type, renderer_context)
        except (ValueError, UnicodeEncodeError):
            return super().render(strict_json.sanitized(data), accepted_media_type, renderer_context)
