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
