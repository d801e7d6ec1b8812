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


def nested(depth: int, leaf: object) -> object:
    """`leaf` under `depth` levels of alternating lists and objects."""
    for level in range(depth):
        leaf = [leaf] if level % 2 else {"k": leaf}
    return leaf


def nested_text(depth: int, leaf: str, key_separator: str = ":") -> str:
    opening = "".join("[" if level % 2 else '{"k"' + key_separator for level in reversed(range(depth)))
    closing = "".join("]" if level % 2 else "}" for level in range(depth))
    return opening + leaf + closing


@pytest.mark.parametrize("depth", [500, 5000])
def test_sanitized_and_dumps_never_raise_on_deep_values(depth):
    deep = nested(depth, {"\udfff": float("nan"), "s": ("c\ud800d",)})
    clean = strict_json.sanitized(deep)
    assert strict_json.problem(clean) is None
    leaf = clean
    for level in reversed(range(depth)):
        leaf = leaf[0] if level % 2 else leaf["k"]
    assert leaf == {"\ufffd": None, "s": ["c\ufffdd"]}
    # As webhooks encode (compact, UTF-8) and as streams do (ASCII, default separators).
    text = strict_json.dumps({"\udfff": 1, "x": deep}, separators=(",", ":"), ensure_ascii=False)
    assert text == '{"\ufffd":1,"x":' + nested_text(depth, '{"\ufffd":null,"s":["c\ufffdd"]}') + "}"
    text = strict_json.dumps(deep)
    assert text == nested_text(depth, '{"\\ufffd": null, "s": ["c\\ufffdd"]}', key_separator=": ")


def test_dumps_writes_a_clean_value_too_deep_for_json_dumps():
    deep = nested(5000, "é")
    with pytest.raises(RecursionError):
        json.dumps(deep)
    assert strict_json.dumps(deep, ensure_ascii=False) == nested_text(5000, '"é"', key_separator=": ")


def test_sanitized_copies_a_shared_container_once_and_keeps_what_it_does_not_know():
    shared = ["c\ud800d"]
    when = object()
    clean = strict_json.sanitized({"a": shared, "b": shared, 3: when})
    assert clean == {"a": ["c\ufffdd"], "b": ["c\ufffdd"], 3: when} and clean["a"] is clean["b"]


def test_sanitized_returns_a_clean_value_as_it_is():
    clean = {"a": ["é", 1.5, None, {"b": True}]}
    assert strict_json.sanitized(clean) is clean
    for bad in ({"a": "c\ud800d"}, {"\udfff": 1}, [float("inf")]):
        assert strict_json.sanitized(bad) is not bad
    # Too deep for json.dumps to tell: copied, whole.
    assert strict_json.dumps(strict_json.sanitized(nested(5000, 1))) == nested_text(5000, "1", key_separator=": ")


@pytest.mark.parametrize("tail", ['"' + '\\"' * 100_000, '"\\\n' * 100_000, '"' + '\\"' * 100_000 + "\\"])
def test_an_unterminated_string_costs_linear_time(tail):
    """A never-closed string full of escaped quotes after many brackets: the depth check
    made each quote scan to the end of the body (quadratic: a 60 KB body took 17 s of the
    event loop, before any key was checked); now it is refused at once, as invalid JSON."""
    import time

    started = time.monotonic()
    with pytest.raises(strict_json.InvalidJson):
        strict_json.loads(("[" * 200 + tail).encode())
    assert time.monotonic() - started < 5  # was minutes
