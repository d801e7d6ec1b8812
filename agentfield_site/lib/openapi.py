"""The answers every API operation can give, added to each operation of the schema.

Authentication, content negotiation, the body rules and a busy database apply to
every route before its view runs, so the schema declares them everywhere rather
than each view repeating them (and the schemathesis conformance test holds the
schema to it).
"""

from typing import Any

from drf_spectacular.views import SpectacularAPIView

from .drf_json import SafeJSONRenderer

_ERROR_REF = {"$ref": "#/components/schemas/Error"}

COMMON = {
    "400": "Bad input: invalid JSON, a body that is not an object, a field that fails validation.",
    "401": "No API key, or an unknown one, while keys are configured.",
    "403": "The key's scope does not cover this call.",
    "406": "The Accept header asks for something other than JSON.",
    "413": "The body is larger than MAX_BODY_BYTES.",
    "503": "The database is busy or unreachable; retry shortly.",
}
WITH_PATH_PARAMETER = {"404": "No such object, or another key's."}


def add_common_errors(result: dict[str, Any], generator, request, public) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: declare COMMON on every `/api/` operation."""
    for path, operations in result.get("paths", {}).items():
        if not path.startswith("/api/"):
            continue
        answers = dict(COMMON)
        if "{" in path:
            answers.update(WITH_PATH_PARAMETER)
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            for code, description in answers.items():
                responses.setdefault(
                    code, {"description": description, "content": {"application/json": {"schema": _ERROR_REF}}}
                )
    return result


class SchemaView(SpectacularAPIView):
    """The OpenAPI schema, whose refusals (401, 403, 405) are the API's JSON errors.

    The schema's own renderer is YAML (`application/vnd.oai.openapi`): a refusal
    rendered by it was a YAML document that a browser saved as a file instead of
    showing, and that API clients could not parse as the errors they know.
    """

    def handle_exception(self, exc: Exception):
        response = super().handle_exception(exc)
        self.request.accepted_renderer = SafeJSONRenderer()
        self.request.accepted_media_type = SafeJSONRenderer.media_type
        return response
