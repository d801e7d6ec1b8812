"""Idempotency-Key: the same key within the window is the same execution."""

from datetime import timedelta

import pytest
from django.utils import timezone

from executions.models import Execution

pytestmark = pytest.mark.django_db

URL = "/api/v1/execute/async/analyzer.process"


def test_same_key_same_execution(api, node):
    first = api.post(URL, {"input": {"n": 1}}, format="json", headers={"Idempotency-Key": "k-1"})
    second = api.post(URL, {"input": {"n": 1}}, format="json", headers={"Idempotency-Key": "k-1"})
    assert first.status_code == second.status_code == 202
    assert first.json()["execution_id"] == second.json()["execution_id"]
    assert Execution.objects.count() == 1
    other = api.post(URL, {"input": {"n": 1}}, format="json", headers={"Idempotency-Key": "k-2"})
    assert other.json()["execution_id"] != first.json()["execution_id"]
    plain = [api.post(URL, {}, format="json").json()["execution_id"] for _ in range(2)]
    assert plain[0] != plain[1], "no key, no de-duplication"


def test_key_is_free_again_after_the_window(api, node, settings):
    settings.IDEMPOTENCY_WINDOW_HOURS = 24
    first = api.post(URL, {}, format="json", headers={"Idempotency-Key": "k"}).json()["execution_id"]
    Execution.objects.filter(pk=first).update(created_at=timezone.now() - timedelta(hours=25))
    second = api.post(URL, {}, format="json", headers={"Idempotency-Key": "k"}).json()["execution_id"]
    assert second != first
    assert Execution.objects.get(pk=first).idempotency_key == ""
    assert Execution.objects.get(pk=second).idempotency_key == "k"
