"""JSON errors for every API failure: `{"error": word, "message": sentence}`.

Never a 500 for bad input: DRF exceptions, Django's own 404/413, and malformed
bodies all end here with a 4xx and a machine-readable word.
"""

import logging

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.core.handlers.asgi import ASGIRequest
from django.db import DataError, OperationalError
from django.http import JsonResponse
from django.http.request import RawPostDataException, UnreadablePostError
from django.utils.deprecation import MiddlewareMixin
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler
from rest_framework.views import set_rollback

from .loop_middleware import HooksOnTheLoop

log = logging.getLogger(__name__)


class ApiError(exceptions.APIException):
    """An error with a chosen HTTP status, machine word and optional extra fields."""

    def __init__(self, status_code: int, error: str, message: str, **extra) -> None:
        self.status_code = status_code
        self.error = error
        self.extra = extra
        super().__init__(detail=message, code=error)


def object_body(request, **extra) -> dict:
    """The request's JSON body as an object; 400 for anything else (bad JSON is already a 400).

    `extra` fields join the error body (executions add `error_category`).
    """
    data = request.data
    if not isinstance(data, dict):
        raise ApiError(400, "bad_request", "The body must be a JSON object.", **extra)
    return data


def int_param(request, name: str, default: int, maximum: int | None = None) -> int:
    """A whole-number query parameter from 0 to `maximum`; 400 otherwise."""
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "bad_request", f"{name} must be a whole number.") from None
    if value < 0 or (maximum is not None and value > maximum):
        bound = f" and at most {maximum}" if maximum is not None else ""
        raise ApiError(400, "bad_request", f"{name} must be at least 0{bound}.")
    return value


def error_body(error: str, message: str, **extra) -> dict:
    return {"error": error, "message": message, **extra}


def error_response(status_code: int, error: str, message: str, **extra) -> JsonResponse:
    return JsonResponse(error_body(error, message, **extra), status=status_code)


_WORDS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def _flatten(detail) -> str:
    if isinstance(detail, dict):
        return "; ".join(f"{k}: {_flatten(v)}" for k, v in detail.items())
    if isinstance(detail, list):
        return "; ".join(_flatten(v) for v in detail)
    return str(detail)


def exception_handler(exc, context):
    """DRF's handler, reshaped so every error body has `error` and `message`."""
    if isinstance(exc, RequestDataTooBig):
        return Response(
            error_body("payload_too_large", f"The body is larger than {settings.MAX_BODY_BYTES} bytes."),
            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    if isinstance(exc, OperationalError):
        # The database is down, locked or out of connections: nothing the client did
        # wrong, and nothing was written (the request's transaction rolled back).
        log.warning("database unavailable: %s", exc)
        set_rollback()
        return Response(
            error_body("unavailable", "The database is busy or unreachable; retry shortly."),
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "1"},
        )
    if isinstance(exc, DataError) and "NUL" in str(exc):
        # PostgreSQL refuses a NUL character in any text it is given, e.g. an id in
        # the URL (`/api/v1/executions/%00`); SQLite just finds nothing.
        set_rollback()
        return Response(
            error_body("bad_request", "The request contains a NUL character (\\u0000 or %00)."),
            status=status.HTTP_400_BAD_REQUEST,
        )
    if isinstance(exc, ApiError):
        return Response(error_body(exc.error, str(exc.detail), **exc.extra), status=exc.status_code)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    code = response.status_code
    if isinstance(exc, exceptions.ParseError):
        word, message = "invalid_json", f"The body is not valid JSON: {exc.detail}"
    elif isinstance(exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)):
        word, message = "unauthorized", _flatten(exc.detail)
        code = status.HTTP_401_UNAUTHORIZED
    elif isinstance(exc, exceptions.ValidationError):
        word, message = "bad_request", _flatten(exc.detail)
    else:
        word, message = _WORDS.get(code, "error"), _flatten(getattr(exc, "detail", str(exc)))
    body = error_body(word, message)
    if isinstance(exc, exceptions.ValidationError) and isinstance(exc.detail, dict):
        body["fields"] = exc.detail
    response.data = body
    response.status_code = code
    return response


class BodyLimitMiddleware(HooksOnTheLoop, MiddlewareMixin):
    """Refuse bodies over MAX_BODY_BYTES with a JSON 413 before anything reads them.

    A chunked body (no Content-Length) is read whole here and given its length:
    DRF reads a body only when Content-Length says there is one, so it would
    otherwise see an empty body and the request would run on `{}`. Under ASGI the
    body is already in memory when this runs, so it runs on the event loop.
    """

    def process_request(self, request) -> JsonResponse | None:
        chunked = "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower()
        if chunked and not request.META.get("CONTENT_LENGTH"):
            refused = self._read_chunked(request)
            if refused is not None:
                return refused
        length = request.META.get("CONTENT_LENGTH") or "0"
        try:
            too_big = int(length) > settings.MAX_BODY_BYTES
        except ValueError:
            return error_response(400, "bad_request", "Content-Length is not a number.")
        if too_big:
            return error_response(
                413, "payload_too_large", f"The body is larger than {settings.MAX_BODY_BYTES} bytes."
            )
        return None

    @staticmethod
    def _read_chunked(request) -> JsonResponse | None:
        if not isinstance(request, ASGIRequest):
            # A WSGI server hands Django the raw stream bounded by Content-Length
            # (none here): the body cannot be read, so say so rather than lose it.
            return error_response(411, "length_required", "Send the body with a Content-Length.")
        try:
            body = request.body
        except RequestDataTooBig:
            return error_response(
                413, "payload_too_large", f"The body is larger than {settings.MAX_BODY_BYTES} bytes."
            )
        except (RawPostDataException, UnreadablePostError):
            return error_response(411, "length_required", "Send the body with a Content-Length.")
        request.META["CONTENT_LENGTH"] = str(len(body))
        return None


# Exempt, or a POST to an unknown API route would get the CSRF middleware's HTML
# 403 page before the 404: API clients send keys, not CSRF tokens.
@csrf_exempt
def api_not_found(request, exception=None):
    """404 handler: JSON under /api/, Django's page elsewhere."""
    if request.path == "/api" or request.path.startswith("/api/"):
        return error_response(404, "not_found", f"No route for {request.method} {request.path}.")
    from django.views.defaults import page_not_found

    return page_not_found(request, exception)


def server_error(request):
    """500 handler: JSON under /api/ so clients can still parse it."""
    if request.path.startswith("/api/"):
        return error_response(500, "internal_error", "The server failed; the error was logged.")
    from django.views.defaults import server_error as django_server_error

    return django_server_error(request)
