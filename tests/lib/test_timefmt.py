from datetime import UTC, datetime, timedelta, timezone

from agentfield_site.lib.timefmt import iso


def test_utc_is_written_with_z():
    assert iso(datetime(2026, 11, 29, 13, 9, 15, 123456, tzinfo=UTC)) == "2026-11-29T13:09:15.123456Z"


def test_other_offsets_are_kept():
    value = datetime(2026, 11, 29, 14, 0, tzinfo=timezone(timedelta(hours=1)))
    assert iso(value) == "2026-11-29T14:00:00+01:00"


def test_none_is_none():
    assert iso(None) is None


def test_python_reads_it_back():
    value = datetime(2026, 11, 29, 13, 9, 15, 5, tzinfo=UTC)
    assert datetime.fromisoformat(iso(value)) == value
