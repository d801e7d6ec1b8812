import time

import pytest

from observability.models import PlatformEvent
from observability.type_patterns import matches, type_regex

TYPES = ["node.online", "execution.completed", "execution.failed", "execution.completed.x", "webhook.delivered", "nodeXonline"]
CASES = [
    (["node.*"], {"node.online"}),
    (["*"], set(TYPES)),
    (["execution.*ed"], {"execution.completed", "execution.failed"}),
    (["execution.completed"], {"execution.completed"}),
    (["node.online", "webhook.*"], {"node.online", "webhook.delivered"}),
    (["*.completed*"], {"execution.completed", "execution.completed.x"}),
    (["**.failed"], {"execution.failed"}),
    (["node*online"], {"node.online", "nodeXonline"}),
]


@pytest.mark.parametrize(("patterns", "expected"), CASES)
def test_in_memory(patterns, expected):
    assert {t for t in TYPES if matches(patterns, t)} == expected


def test_no_patterns_match_nothing():
    assert not matches([], "node.online")


@pytest.mark.django_db
@pytest.mark.parametrize(("patterns", "expected"), CASES)
def test_the_database_agrees(patterns, expected):
    PlatformEvent.objects.bulk_create(PlatformEvent(type=t, source="system") for t in TYPES)
    found = set(PlatformEvent.objects.filter(type__regex=type_regex(patterns)).values_list("type", flat=True))
    assert found == expected


@pytest.mark.parametrize("pattern", ["node.*", "*.failed", "execution.*ed", "*", "a-b_c.d*"])
def test_usable_patterns(pattern):
    from observability.type_patterns import pattern_problem

    assert pattern_problem(pattern) is None


@pytest.mark.parametrize(
    "pattern", ["", "x" * 65, "a b", "\ud800", "node.\u202e", "*a*b*", 5, None, "node.*\n", "x" * 64 + "\n", "Node.*"]
)
def test_unusable_patterns(pattern):
    from observability.type_patterns import pattern_problem

    assert pattern_problem(pattern)


def test_a_pattern_stored_before_the_check_cannot_stall_matching():
    """Many stars against a type they almost match: a backtracking regex takes seconds past a dozen."""
    started = time.perf_counter()
    assert not matches(["*" * 62 + "zz"], "execution.completed")
    assert not matches(["*a" * 31 + "zz"], "a" * 200)
    assert matches(["*a" * 31 + "*"], "a" * 200)
    assert time.perf_counter() - started < 0.5
