"""Hostile input from the OpenAPI schema: every operation, generated bodies and
parameters, with and without credentials. The server never answers 5xx, and every
answer is one the schema declares: its status code, content type and body."""

from urllib.parse import urlsplit

import pytest
import schemathesis
from django.core.wsgi import get_wsgi_application
from django.urls import resolve
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from agentfield_site.lib import api

# Generated in-process (no request, no database at collection time), then
# exercised through the real WSGI stack.
schema = schemathesis.openapi.from_dict(SchemaGenerator().get_schema(request=None, public=True))
schema.app = get_wsgi_application()

FUZZ = settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
# Without a key every request stops at authentication: a few examples show it.
FUZZ_NO_KEY = settings(FUZZ, max_examples=3)


# The schema is the responses: anything else these find is drift.
CONFORMS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture
def api_key(settings):
    settings.API_KEYS = ["fuzz-key"]
    return "fuzz-key"


@pytest.mark.django_db(transaction=True)
@schema.parametrize()
@FUZZ
def test_every_answer_is_in_the_schema_with_a_key(case, api_key):
    case.call_and_validate(headers={"X-API-Key": api_key}, checks=CONFORMS)


@pytest.mark.django_db(transaction=True)
@schema.parametrize()
@FUZZ_NO_KEY
def test_every_answer_is_in_the_schema_and_closed_without_a_key(case, api_key):
    response = case.call_and_validate(headers={}, checks=CONFORMS)
    assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code}"
    if response.status_code == 404 and resolve(urlsplit(case.formatted_path).path).func is api.api_not_found:
        return  # a generated id no route accepts (e.g. with a '.'): the JSON 404, nothing behind it
    # 406: DRF negotiates the response type before it authenticates; a generated
    # Accept header it cannot serve is refused before anything is read.
    assert response.status_code in (401, 403, 406), f"{case.method} {case.formatted_path} is open without a key"
