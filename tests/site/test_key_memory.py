"""A web process remembers a valid key for API_KEY_CACHE_SECONDS: no query per call, revocations still hold."""

import time

import pytest
from django.contrib.admin.sites import site
from django.test import RequestFactory
from django.utils import timezone

from agentfield_site import auth
from agentfield_site.models import ApiKey

pytestmark = pytest.mark.django_db


@pytest.fixture
def key() -> tuple[ApiKey, str]:
    return ApiKey.create("remembered", ApiKey.Scope.CLIENT)


def test_a_valid_key_is_looked_up_once(key, django_assert_num_queries):
    row, raw = key
    first = auth.check_key(raw)
    assert first is not None and first.caller.key_id == row.pk
    with django_assert_num_queries(0):
        again = auth.check_key(raw)
    assert again.caller == first.caller
    assert auth.remembered_key(raw) == first.caller


def test_made_up_keys_are_not_remembered(key):
    for n in range(50):
        assert auth.check_key(f"af_made_up_{n}") is None
    assert auth._remembered == {}
    assert auth.remembered_key("af_made_up_0") is None


def test_a_key_revoked_in_the_admin_is_refused_at_once(key, admin_user):
    row, raw = key
    assert auth.check_key(raw) is not None
    request = RequestFactory().post("/")
    request.user = admin_user
    request._messages = type("M", (), {"add": lambda *a, **k: None})()
    site._registry[ApiKey].revoke(request, ApiKey.objects.filter(pk=row.pk))
    assert auth.check_key(raw) is None


def test_a_reissued_key_stops_working_at_once(key):
    row, raw = key
    assert auth.check_key(raw) is not None
    fresh = row.reissue()
    assert auth.check_key(raw) is None
    assert auth.check_key(fresh).caller.key_id == row.pk


def test_a_key_revoked_by_another_process_is_refused_within_the_cache_time(key, settings):
    settings.API_KEY_CACHE_SECONDS = 0.2
    row, raw = key
    assert auth.check_key(raw) is not None
    # Another process (the `apikey` command, another web process) revokes it: nothing tells this one.
    ApiKey.objects.filter(pk=row.pk).update(revoked_at=timezone.now())
    assert auth.check_key(raw) is not None
    time.sleep(0.25)
    assert auth.check_key(raw) is None


def test_no_memory_when_the_cache_time_is_zero(key, settings, django_assert_num_queries):
    settings.API_KEY_CACHE_SECONDS = 0
    _, raw = key
    auth.check_key(raw)
    with django_assert_num_queries(1):
        assert auth.check_key(raw) is not None
