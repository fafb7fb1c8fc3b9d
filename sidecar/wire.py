"""JSON as the sidecar reads it, on every route (the /authorize fast path and Flask alike). Pure.

orjson parses (it refuses NaN, Infinity and invalid UTF-8); a body with the same key twice in
one object, at any depth, is refused: parsers disagree on which value wins, so a caller whose
parser keeps the first would see another request than the one decided.

Duplicates are found without a second parse in the common case: with no backslash in the body,
every string (key or value) is written with exactly two `"`, so the body's quotes are twice the
strings written. Parsing drops a repeated key (and its value), so the quotes are twice the
strings parsed exactly when no key repeats. Otherwise (a backslash, or a count that differs)
the standard library parses again and names the repeated key. tests/test_wire.py checks both
ways agree on generated bodies.
"""
from __future__ import annotations

import json
from typing import Any

import orjson

from sidecar.errors import BadRequestError


def loads(raw: bytes | str) -> Any:
    """The JSON value of a request body, or a 400 naming what is wrong with it."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if "depth" in str(exc) or "ecursion" in str(exc):
            raise BadRequestError.field("body", "The request body is nested too deeply.") from None
        raise BadRequestError.field("body", "The request body is not valid JSON.") from None
    if b"\\" in data:
        _refuse_duplicate_keys(data)
        return value
    try:
        strings = count_strings(value)
    except RecursionError:
        strings = -1
    if data.count(b'"') != 2 * strings:
        _refuse_duplicate_keys(data)
    return value


def count_strings(value: Any) -> int:
    """Keys and string values in a parsed JSON value."""
    kind = type(value)
    if kind is str:
        return 1
    count = 0
    if kind is dict:
        count = len(value)
        items = value.values()
    elif kind is list:
        items = value
    else:
        return 0
    for item in items:
        sub = type(item)
        if sub is str:
            count += 1
        elif sub is dict or sub is list:
            count += count_strings(item)
    return count


def _refuse_duplicate_keys(data: bytes) -> None:
    try:
        json.loads(data, object_pairs_hook=_unique_pairs)
    except RecursionError:
        raise BadRequestError.field("body", "The request body is nested too deeply.") from None
    except ValueError:  # orjson accepted it; a stricter stdlib reading (say a lone surrogate) is no dup
        pass


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                break
            seen.add(key)
        raise BadRequestError.field("body", f"The key {key!r} appears twice in one object; duplicate "
                                    "keys are refused (parsers disagree on which one wins).")
    return value
