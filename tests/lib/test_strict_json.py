"""The strict decoder refuses what cannot be stored or sent on, and says where; the
tolerant encoder never raises on a stored bad value."""

import json

import pytest

from agentfield_site.lib import strict_json


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b'{"a": "c\\ud800d"}', "lone UTF-16 surrogate (\\ud800) at character 1 in the string at $.a"),
        (b'{"a": ["\\udc00"]}', "surrogate (\\udc00) at character 0 in the string at $.a[0]"),
        (b'{"a": {"\\ud800": 1}}', "in a key at $.a"),
        (b'{"a": "\xed\xa0\x80"}', "not UTF-8 at byte 7"),  # a surrogate encoded as raw bytes
        (b'{"a": "\xff"}', "not UTF-8 at byte 7"),
        (b'{"a": "x\\u0000"}', "NUL character"),
        (b'{"a": 1e999}', "the number 1e999 at $.a does not fit a double"),
        (b'{"a": -1e999}', "does not fit a double"),
        (b'{"a": NaN}', "the number NaN at $.a"),
        (b'{"a": Infinity}', "the number Infinity"),
        (b'{"a": ' + b"9" * 310 + b"}", "does not fit a double"),
        (b'{"a": ' + b"9" * 5000 + b"}", "does not fit a double"),
        (b"[" * 129 + b"]" * 129, "nesting deeper than 128"),
        (b"[" * 100_000, "nesting deeper than 128"),
        (b'{"a": 1,}', "line 1 column 9 (char 8)"),
        (b"\xef\xbb\xbf{}", "byte order mark"),
        (b"", "Expecting value"),
    ],
)
def test_refused_with_what_and_where(raw, says):
    with pytest.raises(strict_json.InvalidJson) as refused:
        strict_json.loads(raw)
    assert says in str(refused.value)


def test_accepted_values_round_trip():
    text = '{"emoji": "\\ud83d\\ude00", "max": 1.7976931348623157e308, "int": 12345678901234567890, "deep": ' + "[" * 127 + "]" * 127 + "}"
    value = strict_json.loads(text)
    assert value["emoji"] == "😀" and value["max"] == 1.7976931348623157e308 and value["int"] == 12345678901234567890
    assert strict_json.loads(text.encode()) == value


def test_dumps_escapes_what_it_cannot_encode():
    bad = {"s": "c\ud800d", "n": float("inf"), "ok": ["é", 1.5]}
    for kwargs in ({}, {"ensure_ascii": False}):
        assert json.loads(strict_json.dumps(bad, **kwargs)) == {"s": "c\ufffdd", "n": None, "ok": ["é", 1.5]}
    assert strict_json.dumps({"emoji": "😀"}) == json.dumps({"emoji": "😀"})
    assert "surrogate" in strict_json.problem({"s": bad["s"]}) and "$.n" in strict_json.problem({"n": bad["n"]})
    assert strict_json.problem(bad["ok"]) is None
