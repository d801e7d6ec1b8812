"""JSON errors for every API failure: `{"error": word, "message": sentence}`.

Never a 500 for bad input: DRF exceptions, Django's own 404/413, and malformed
bodies all end here with a 4xx and a machine-readable word.
"""

import logging
from collections.abc import Callable

from django.conf import settings
from django.core.exceptions import DisallowedHost, RequestDataTooBig
from django.core.handlers.asgi import ASGIRequest
from django.db import DataError, OperationalError
from django.http import JsonResponse
from django.http.request import RawPostDataException, UnreadablePostError
from django.urls import Resolver404, resolve
from django.utils.deprecation import MiddlewareMixin
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions, serializers, status
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import exception_handler as drf_exception_handler
from rest_framework.views import set_rollback

from .loop_middleware import HooksOnTheLoop

log = logging.getLogger(__name__)


class ApiError(exceptions.APIException):
    """An error with a chosen HTTP status, machine word and optional extra fields."""

    def __init__(self, status_code: int, error: str, message: str, *, headers: dict | None = None, **extra) -> None:
        self.status_code = status_code
        self.error = error
        self.extra = extra
        self.headers = headers or {}
        super().__init__(detail=message, code=error)


class ErrorSerializer(serializers.Serializer):
    """Every 4xx/5xx body; some errors add fields beside these (e.g. `status`)."""

    error = serializers.CharField(help_text="A short machine word.")
    message = serializers.CharField(help_text="A human sentence.")
    error_category = serializers.CharField(required=False, help_text="Execution errors only.")
    fields = serializers.DictField(required=False, help_text="Per-field problems of a 400.")


class DocumentSerializer(serializers.Serializer):
    """An output serializer whose declared fields are the schema and `document(instance)` the body.

    Rendering is one dict per object, without DRF's per-field machinery, so the
    hot paths (status reads, submissions) pay nothing for it; the schemathesis
    conformance test keeps the two in step.
    """

    def to_representation(self, instance) -> dict:
        return self.document(instance)

    def document(self, instance) -> dict:
        raise NotImplementedError


# Domain errors are plain exceptions raised by the services; the app that owns one
# says here, once, how the API answers it (the admin shows their message instead).
_translators: dict[type[Exception], Callable[[Exception], ApiError]] = {}


def translates(*exc_types: type[Exception]):
    """Register the decorated `fn(exc) -> ApiError` as the API's answer to these domain errors."""

    def register(fn: Callable[[Exception], ApiError]) -> Callable[[Exception], ApiError]:
        for exc_type in exc_types:
            _translators[exc_type] = fn
        return fn

    return register


def _translated(exc: Exception) -> ApiError | None:
    for klass in type(exc).__mro__:
        translator = _translators.get(klass)
        if translator is not None:
            return translator(exc)
    return None


def is_refusal(exc: Exception) -> bool:
    """True for an error the API answers with a 4xx or 503 of its own: `ApiError` or a translated domain error."""
    return isinstance(exc, ApiError) or any(klass in _translators for klass in type(exc).__mro__)


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


# A serializer may name the error word of its refusal with the ValidationError's
# code, when the contract gives that refusal a word of its own.
_WORDS_FROM_CODES = {"invalid_field"}


def _codes(codes) -> set[str]:
    if isinstance(codes, dict):
        return set().union(*(_codes(v) for v in codes.values())) if codes else set()
    if isinstance(codes, list):
        return set().union(*(_codes(v) for v in codes)) if codes else set()
    return {codes}


def invalid(exc: exceptions.ValidationError, **extra) -> ApiError:
    """A serializer's refusal as the API's 400: a word, a sentence and `fields` when per field."""
    codes = _codes(exc.get_codes())
    word = codes.pop() if len(codes) == 1 and codes <= _WORDS_FROM_CODES else "bad_request"
    if isinstance(exc.detail, dict):
        extra["fields"] = exc.detail
    return ApiError(400, word, _flatten(exc.detail), **extra)


def validated(serializer_class: type[serializers.Serializer], data: object, **extra) -> dict:
    """`data` validated by `serializer_class`; `invalid(...)` (a 400) otherwise. `extra` joins the error."""
    serializer = serializer_class(data=data)
    try:
        if not serializer.is_valid():
            raise invalid(exceptions.ValidationError(serializer.errors), **extra)
        return serializer.validated_data
    finally:
        # A serializer and its fields hold each other (`fields`, each field's `parent`): let
        # them go by reference counting, not wait for the cyclic collector (one per submit).
        serializer.__dict__.pop("fields", None)


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
        # A refusal of the whole body reads as itself, not as "non_field_errors: ...".
        return "; ".join(
            _flatten(v) if k == api_settings.NON_FIELD_ERRORS_KEY else f"{k}: {_flatten(v)}" for k, v in detail.items()
        )
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
    exc = _translated(exc) or exc
    if isinstance(exc, exceptions.ValidationError):
        exc = invalid(exc)
    if isinstance(exc, ApiError):
        return Response(error_body(exc.error, str(exc.detail), **exc.extra), status=exc.status_code, headers=exc.headers)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    code = response.status_code
    if isinstance(exc, exceptions.ParseError):
        word, message = "invalid_json", f"The body is not valid JSON: {exc.detail}"
    elif isinstance(exc, exceptions.NotAuthenticated):
        # DRF drops the permission's own message for a request with no credentials
        # ("Authentication credentials were not provided."): say what to send. Imported
        # here: DRF's views, which this module imports, import auth's classes.
        from agentfield_site.auth import HasApiKeyIfConfigured

        word, message = "unauthorized", HasApiKeyIfConfigured.message
        code = status.HTTP_401_UNAUTHORIZED
    elif isinstance(exc, exceptions.AuthenticationFailed):
        word, message = "unauthorized", _flatten(exc.detail)
        code = status.HTTP_401_UNAUTHORIZED
    else:
        word, message = _WORDS.get(code, "error"), _flatten(getattr(exc, "detail", str(exc)))
    response.data = error_body(word, message)
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


def api_bad_request(request, exception=None):
    """400 handler (a Host not in ALLOWED_HOSTS, a malformed upload): JSON under /api/, Django's page elsewhere."""
    if request.path == "/api" or request.path.startswith("/api/"):
        if isinstance(exception, DisallowedHost):
            return error_response(400, "bad_request", "The Host header names no host this server answers for (ALLOWED_HOSTS).")
        return error_response(400, "bad_request", "The request is malformed.")
    from django.views.defaults import bad_request

    return bad_request(request, exception)


# Exempt, or a POST to an unknown API route would get the CSRF middleware's HTML
# 403 page before the 404: API clients send keys, not CSRF tokens.
@csrf_exempt
def api_not_found(request, exception=None):
    """404 handler: JSON under /api/, Django's page elsewhere."""
    if request.path == "/api" or request.path.startswith("/api/"):
        message = f"No route for {request.method} {request.path}."
        if request.path.endswith("/") and _routes_to(request.path_info.rstrip("/")):
            message += f" The API's paths end without a slash: {request.path.rstrip('/')}."
        return error_response(404, "not_found", message)
    from django.views.defaults import page_not_found

    return page_not_found(request, exception)


def _routes_to(path: str) -> bool:
    """Whether a route other than this catch-all answers `path`."""
    try:
        return resolve(path).func is not api_not_found
    except Resolver404:
        return False


def server_error(request):
    """500 handler: JSON under /api/ so clients can still parse it."""
    if request.path.startswith("/api/"):
        return error_response(500, "internal_error", "The server failed; the error was logged.")
    from django.views.defaults import server_error as django_server_error

    return django_server_error(request)
