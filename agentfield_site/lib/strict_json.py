"""JSON strict at the door, tolerant on the way out.

`loads` is the one decoder for everything a caller sends (REST bodies through the
DRF parser, WebSocket messages). It refuses what parses in Python but cannot be
stored or sent on faithfully: bytes that are not UTF-8, lone UTF-16 surrogates
(raw or as `\\ud800` escapes), NUL characters (PostgreSQL's jsonb and text refuse
them), nesting deeper than MAX_DEPTH, and numbers that do not fit a double
(`1e999`, `NaN`, 400-digit integers). Each refusal says where.

`dumps` is for stored data on its way out (API responses, stream frames, webhook
and collector bodies). A row written before these rules, or by another path, may
still hold such a value; it is replaced (U+FFFD for a lone surrogate, null for a
non-finite number) rather than raising, so one bad row cannot 500 a list or wedge
a pipeline. `problem` says what would be replaced, for those that must report it.
"""

import json
import math
import re
from typing import Any

MAX_DEPTH = 128
# A double's largest finite value has 309 digits; longer integers cannot fit, and
# int() on thousands of digits is itself slow.
_MAX_INT_DIGITS = 309
_BAD_CHAR = re.compile("[\ud800-\udfff\x00]")
_SURROGATE = re.compile("[\ud800-\udfff]")
REPLACEMENT = "\ufffd"


class InvalidJson(ValueError):
    """A body or message refused at the door; the message says what and where."""


class _OutOfRange:
    """Placeholder a number literal decodes to when it does not fit a double."""

    __slots__ = ("literal",)

    def __init__(self, literal: str) -> None:
        self.literal = literal


def _float(literal: str) -> float | _OutOfRange:
    value = float(literal)
    return value if math.isfinite(value) else _OutOfRange(literal)


def _int(literal: str) -> int | _OutOfRange:
    if len(literal.lstrip("-")) > _MAX_INT_DIGITS:
        return _OutOfRange(literal[:20] + "...")
    value = int(literal)
    try:
        float(value)
    except OverflowError:
        return _OutOfRange(literal[:20] + "...")
    return value


def _key_path(path: str, key: str) -> str:
    return f"{path}.{key}" if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", key) else f"{path}[{key[:64]!r}]"


def _clip(path: str) -> str:
    return path if len(path) <= 200 else f"{path[:100]}...{path[-90:]}"


def _char_problem(text: str, pattern: re.Pattern = _BAD_CHAR) -> str | None:
    found = pattern.search(text)
    if found is None:
        return None
    if found.group() == "\x00":
        return f"a NUL character (\\u0000) at character {found.start()}"
    return f"a lone UTF-16 surrogate (\\u{ord(found.group()):04x}) at character {found.start()}"


def _walk(value: Any, max_depth: int, chars: re.Pattern = _BAD_CHAR) -> str | None:
    """The first thing in `value` that strict JSON refuses, with its path; None when clean."""
    stack: list[tuple[Any, str, int]] = [(value, "$", 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            why = _char_problem(item, chars)
            if why:
                return f"{why} in the string at {_clip(path)}"
        elif isinstance(item, bool) or item is None or isinstance(item, int):
            continue
        elif isinstance(item, float):
            if not math.isfinite(item):
                return f"the number {item} at {_clip(path)} does not fit a double"
        elif isinstance(item, _OutOfRange):
            return f"the number {item.literal} at {_clip(path)} does not fit a double"
        elif isinstance(item, dict | list):
            if depth >= max_depth:
                return f"nesting deeper than {max_depth}"
            if isinstance(item, dict):
                for key, child in item.items():
                    key = str(key)
                    why = _char_problem(key, chars)
                    if why:
                        return f"{why} in a key at {_clip(path)}"
                    stack.append((child, _key_path(path, key), depth + 1))
            else:
                stack.extend((child, f"{path}[{i}]", depth + 1) for i, child in enumerate(item))
    return None


# A string, or an unterminated one to the end of the text: every quote that opens a
# match ends it in one pass. Requiring the closing quote made each quote of a body
# such as `"\"\"\"...` (never closed) scan to the end and fail, then the next
# one again: quadratic, and a 60 KB body held the event loop for 17 s.
_STRING = re.compile(r'"(?:[^"\\]|\\[\s\S])*(?:"|\\?\Z)')
_BRACKET = re.compile(r"[\[\]{}]")


def _too_deep(text: str, max_depth: int) -> bool:
    """True when arrays and objects nest deeper than `max_depth` (checked before the parser recurses).

    Refusing such a body before `json.loads` keeps the parser from recursing to
    Python's limit, where a finalizer running at that depth fails too. Only a body
    with more brackets than `max_depth` is scanned.
    """
    if text.count("[") + text.count("{") <= max_depth:
        return False
    depth = 0
    for bracket in _BRACKET.findall(_STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        if depth > max_depth:
            return True
    return False


def loads(data: bytes | str, max_depth: int = MAX_DEPTH) -> Any:
    """Decode strict JSON; InvalidJson says what is wrong and where."""
    if isinstance(data, bytes | bytearray):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidJson(f"the body is not UTF-8 at byte {exc.start}") from None
    else:
        text = data
    if text.startswith("\ufeff"):
        raise InvalidJson("a byte order mark at character 0")
    if _too_deep(text, max_depth):
        raise InvalidJson(f"nesting deeper than {max_depth}")
    try:
        value = json.loads(text, parse_float=_float, parse_int=_int, parse_constant=_OutOfRange)
    except RecursionError:
        raise InvalidJson(f"nesting deeper than {max_depth}") from None
    except json.JSONDecodeError as exc:
        raise InvalidJson(f"{exc.msg} at line {exc.lineno} column {exc.colno} (char {exc.pos})") from None
    except ValueError as exc:  # int() refusing a number literal
        raise InvalidJson(str(exc)) from None
    why = _walk(value, max_depth)
    if why:
        raise InvalidJson(why)
    return value


def problem(value: Any) -> str | None:
    """Why `value` cannot be sent as JSON (a lone surrogate, a non-finite number), or None."""
    return _walk(value, max_depth=10_000, chars=_SURROGATE)


def _encodes(value: Any) -> bool:
    """Whether `value` encodes as it is (UTF-8, finite numbers, not too deep for json.dumps)."""
    try:
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError, RecursionError):
        return False
    return True


def _sanitized_leaf(value: Any) -> Any:
    if isinstance(value, str):
        return _SURROGATE.sub(REPLACEMENT, value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value


def sanitized(value: Any) -> Any:
    """`value` with lone surrogates replaced by U+FFFD and non-finite numbers by None.

    Objects other than str, float, dict, list and tuple pass through (dates, ids):
    the encoder that follows knows them. A value with nothing to replace is returned
    as it is, decided by one pass of the C encoder: nearly every value is clean, and
    the copy is several times slower. The copy is made with a stack, not recursion:
    a value stored before MAX_DEPTH was enforced may nest deeper than Python's limit.
    """
    if _encodes(value):
        return value
    if not isinstance(value, dict | list | tuple):
        return _sanitized_leaf(value)
    root: dict | list = {} if isinstance(value, dict) else []
    # Copies by the id of their original: a container met twice is copied once
    # (and a cycle stays a cycle, for the encoder to refuse, instead of looping here).
    copies = {id(value): root}
    stack: list[tuple[Any, dict | list]] = [(value, root)]
    while stack:
        source, copy = stack.pop()
        pairs = source.items() if isinstance(source, dict) else enumerate(source)
        for key, child in pairs:
            if isinstance(child, dict | list | tuple):
                if id(child) not in copies:
                    copies[id(child)] = {} if isinstance(child, dict) else []
                    stack.append((child, copies[id(child)]))
                child = copies[id(child)]
            else:
                child = _sanitized_leaf(child)
            if isinstance(copy, dict):
                copy[_sanitized_leaf(key) if isinstance(key, str) else key] = child
            else:
                copy.append(child)
    return root


def _deep_dumps(value: Any, **kwargs: Any) -> str:
    """json.dumps for a value nested deeper than the C encoder's recursion allows.

    Containers are written from a stack; each scalar (and each object the encoder's
    `default` turns into JSON) by json.dumps itself. `separators` and `ensure_ascii`
    are honoured, `indent` and `sort_keys` are not.
    """
    kwargs.pop("indent", None)
    kwargs.pop("sort_keys", None)
    item_separator, key_separator = kwargs.pop("separators", None) or (", ", ": ")
    out: list[str] = []
    # Per open container: its items still to write, its closing bracket, whether one was written.
    stack: list[list] = []
    pending = [value]
    while pending or stack:
        if pending:
            item = pending.pop()
            if isinstance(item, dict):
                out.append("{")
                stack.append([iter(item.items()), "}", False])
            elif isinstance(item, list | tuple):
                out.append("[")
                stack.append([iter(item), "]", False])
            else:
                out.append(json.dumps(item, **kwargs))
            continue
        top = stack[-1]
        child = next(top[0], _END)
        if child is _END:
            out.append(top[1])
            stack.pop()
            continue
        if top[2]:
            out.append(item_separator)
        top[2] = True
        if top[1] == "}":
            key, child = child
            out.append(json.dumps(key if isinstance(key, str) else json.dumps(key), **kwargs) + key_separator)
        pending.append(child)
    return "".join(out)


_END = object()


def dumps(value: Any, **kwargs: Any) -> str:
    """json.dumps that never raises on a stored bad value: see `sanitized`.

    The fast path is plain json.dumps; only a value that fails (or holds a
    surrogate, which json.dumps would pass on unencodable) is sanitized. A value
    nested too deep for json.dumps is written by `_deep_dumps`.
    """
    kwargs.setdefault("allow_nan", False)
    try:
        text = json.dumps(value, **kwargs)
        if kwargs.get("ensure_ascii", True) is False:
            text.encode("utf-8")
        elif "\\ud" in text and problem(value):
            raise ValueError("a lone surrogate")
        return text
    except (ValueError, UnicodeEncodeError, RecursionError):
        clean = sanitized(value)
    try:
        return json.dumps(clean, **kwargs)
    except RecursionError:
        return _deep_dumps(clean, **kwargs)
