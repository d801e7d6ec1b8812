"""Domain errors become HTTP answers in one registry; serializer refusals keep one shape."""

from rest_framework import exceptions

from agentfield_site.lib import api


class Refused(Exception):
    """A domain error as an app would define it: no HTTP in it."""


class RefusedHarder(Refused):
    pass


def test_a_registered_domain_error_and_its_subclasses_get_the_apps_answer(monkeypatch):
    monkeypatch.setattr(api, "_translators", {})
    api.translates(Refused)(lambda exc: api.ApiError(409, "refused", str(exc), hint="try later"))
    response = api.exception_handler(RefusedHarder("No."), {})
    assert response.status_code == 409
    assert response.data == {"error": "refused", "message": "No.", "hint": "try later"}


def test_an_unregistered_exception_is_left_alone(monkeypatch):
    monkeypatch.setattr(api, "_translators", {})
    assert api.exception_handler(Refused("No."), {}) is None


def test_serializer_refusals_are_bad_request_with_fields_unless_they_name_their_word():
    plain = api.invalid(exceptions.ValidationError({"url": ["url is required."]}), error_category="bad_request")
    assert (plain.status_code, plain.error, str(plain.detail)) == (400, "bad_request", "url: url is required.")
    assert plain.extra == {"error_category": "bad_request", "fields": {"url": ["url is required."]}}
    named = api.invalid(exceptions.ValidationError({"duration_ms": [exceptions.ErrorDetail("too big", "invalid_field")]}))
    assert named.error == "invalid_field"
    mixed = api.invalid(exceptions.ValidationError({
        "duration_ms": [exceptions.ErrorDetail("too big", "invalid_field")],
        "status": [exceptions.ErrorDetail("unknown", "invalid")],
    }))
    assert mixed.error == "bad_request"


def test_a_validating_serializer_is_freed_without_the_cyclic_collector():
    """A serializer and its fields hold each other; `validated` (once per submit) lets them go at once."""
    import gc

    from rest_framework import serializers

    from agentfield_site.lib.api import validated

    class Probe(serializers.Serializer):
        name = serializers.CharField()
        count = serializers.IntegerField()

    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        assert validated(Probe, {"name": "a", "count": 1}) == {"name": "a", "count": 1}
        gc.collect()
        left = [o for o in gc.garbage if isinstance(o, Probe | serializers.Field)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert left == []
