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


@pytest.mark.parametrize("value", [1e23, 1.5e300, -2.5e17, [0.1, {"m": 1e100}]])
def test_a_replay_with_large_floats_is_the_same_execution(api, node, value):
    """PostgreSQL gives 1e23 back as the integer 100000000000000000000000: still the input sent, not a 409."""
    body = {"input": {"n": value, "s": "x"}}
    first = api.post(URL, body, format="json", headers={"Idempotency-Key": "k-f"})
    second = api.post(URL, body, format="json", headers={"Idempotency-Key": "k-f"})
    assert first.status_code == second.status_code == 202, second.content
    assert first.json()["execution_id"] == second.json()["execution_id"]
    other = api.post(URL, {"input": {"n": 7, "s": "x"}}, format="json", headers={"Idempotency-Key": "k-f"})
    assert other.status_code == 409
    assert Execution.objects.count() == 1


@pytest.mark.parametrize(("first", "then"), [(1, True), (True, 1), (0, False), (1.0, True), ([1], [True])])
def test_true_is_not_the_number_one_in_a_replay(api, node, first, then):
    """Python holds True == 1: a replay with another input was taken for the first request."""
    api.post(URL, {"input": {"x": first}}, format="json", headers={"Idempotency-Key": "k-b"})
    other = api.post(URL, {"input": {"x": then}}, format="json", headers={"Idempotency-Key": "k-b"})
    assert other.status_code == 409, other.content
    assert Execution.objects.count() == 1


def test_key_is_free_again_after_the_window(api, node, settings):
    settings.IDEMPOTENCY_WINDOW_HOURS = 24
    first = api.post(URL, {}, format="json", headers={"Idempotency-Key": "k"}).json()["execution_id"]
    Execution.objects.filter(pk=first).update(created_at=timezone.now() - timedelta(hours=25))
    second = api.post(URL, {}, format="json", headers={"Idempotency-Key": "k"}).json()["execution_id"]
    assert second != first
    assert Execution.objects.get(pk=first).idempotency_key == ""
    assert Execution.objects.get(pk=second).idempotency_key == "k"
