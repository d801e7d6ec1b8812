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


def test_a_stream_filter_holds_at_most_fifty_patterns():
    """Each event is matched against every pattern of every open stream on the event loop: a
    1 MiB WebSocket message held 60,000, some 40 ms per event per socket, and a key may hold 100."""
    from observability.stream_filters import FilterError, parse_filters

    fifty = [f"execution.t{i}*" for i in range(50)]
    assert len(parse_filters({"types": fifty}).types) == 50
    assert len(parse_filters({"types": ",".join(fifty + fifty)}).types) == 50, "repeats count once"
    for types in (fifty + ["node.*"], ",".join(fifty + ["node.*"]), [f"x{i}" for i in range(60_000)]):
        with pytest.raises(FilterError, match="at most 50 patterns"):
            parse_filters({"types": types})
