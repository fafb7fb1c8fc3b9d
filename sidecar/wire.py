"""The wire format, on every route (the /authorize fast path and Flask alike); imports no Flask.

One content-type rule (`is_json`), one body reader (`parse_json`, with its size limit), one
/authorize parser (`parse_check`, `parse_batch`) and one error envelope (`error_body`, the 500
included). Both transports call these and only render what they return. Pure.

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
from collections.abc import Callable
from typing import Any, NamedTuple

import orjson

from sidecar.engine import AuthzRequest
from sidecar.errors import BadRequestError, ChatAuthzError
from sidecar.validation import Token, clean_id, consistency, context, reject_unknown, require_object

NOT_JSON = "The request body must be JSON (Content-Type: application/json)."
INTERNAL = "Internal error; the request changed nothing it could not finish. See the server log."
CHECK_FIELDS = {"uid", "action", "guid", "target", "context", "atLeastRevision"}
Check = tuple[AuthzRequest, int | Token | None]  # a parsed /authorize check: request, atLeastRevision


class PayloadTooLargeError(ChatAuthzError):
    code = "ERR_PAYLOAD_TOO_LARGE"
    status = 413

    def __init__(self) -> None:
        super().__init__("The request body is too large.")


def is_json(content_type: str | None) -> bool:
    """application/json or application/<anything>+json, parameters (charset) ignored."""
    mimetype = (content_type or "").partition(";")[0].strip().lower()
    return mimetype == "application/json" or (mimetype.startswith("application/") and mimetype.endswith("+json"))


def read_json(content_type: str | None, content_length: str | int | None, read: Callable[[int], bytes], *,
              limit: int, optional: bool = False) -> Any:
    """A request body's JSON value. The content type and length are checked before read(length)
    is called, so a body that is not JSON, or too large, is never waited for; optional: no body
    at all is {} whatever its content type."""
    try:
        length = int(content_length or 0)
    except ValueError:
        length = -1
    if optional and length == 0:
        return {}
    if not is_json(content_type):
        raise BadRequestError.field("body", NOT_JSON)
    if length < 0:
        raise BadRequestError.field("body", "The Content-Length header is invalid.")
    if length > limit:
        raise PayloadTooLargeError
    return loads(read(length) if length else b"")


def parse_check(body: Any) -> Check:
    """One /authorize check: the request and its atLeastRevision, or a 400 naming the field."""
    body = require_object(body)
    reject_unknown(body, CHECK_FIELDS)
    get = body.get
    return check_of(get("uid"), get("action"), get("guid"), get("target"), get("context"), get("atLeastRevision"))


def check_of(uid: Any, action: Any, guid: Any = None, target: Any = None, facts: Any = None,
             at_least: Any = None) -> Check:
    """A check from its fields, as a body names them (parse_check; Embedded passes its arguments
    here, without a body): the request and its atLeastRevision, or a 400 naming the field."""
    if not isinstance(action, str) or not action or len(action) > 100:
        raise BadRequestError.field("action", "The action field is required and must be a string.")
    guid = clean_id(guid, "guid") if guid is not None else None
    target = clean_id(target, "target") if target is not None else None
    return AuthzRequest(clean_id(uid, "uid"), action, guid, target, context(facts)), consistency(at_least)


class Query(NamedTuple):
    """A capabilities or list question: who (uid, or the group for /authorize/members), what,
    where, on whom; paging; atLeastRevision."""
    uid: str | None
    guid: str | None
    action: str | None
    target: str | None
    context: dict[str, Any]
    cursor: str | None
    limit: int
    at_least: int | Token | None


QUERY_FIELDS = {"capabilities": {"uid", "guid", "target", "context", "atLeastRevision"},
                "groups": {"uid", "action", "context", "cursor", "limit", "atLeastRevision"},
                "members": {"guid", "action", "target", "context", "cursor", "limit", "atLeastRevision"}}
MAX_LIST_LIMIT = 1000


def parse_query(body: Any, kind: str) -> Query:
    """POST /authorize/capabilities, /authorize/groups or /authorize/members (kind)."""
    fields = QUERY_FIELDS[kind]
    body = require_object(body)
    reject_unknown(body, fields)
    action = body.get("action")
    if "action" in fields and (not isinstance(action, str) or not action or len(action) > 100):
        raise BadRequestError.field("action", "The action field is required and must be a string.")
    limit = body.get("limit", 100)
    if type(limit) is not int or not 1 <= limit <= MAX_LIST_LIMIT:
        raise BadRequestError.field("limit", f"The limit must be an integer from 1 to {MAX_LIST_LIMIT}.")

    def optional_id(name: str) -> str | None:
        return clean_id(body[name], name) if body.get(name) is not None else None
    return Query(clean_id(body.get("uid"), "uid") if "uid" in fields and kind != "members" else None,
                 clean_id(body.get("guid"), "guid") if kind == "members" else optional_id("guid") if "guid" in fields
                 else None,
                 action if "action" in fields else None, optional_id("target") if "target" in fields else None,
                 context(body.get("context")), optional_id("cursor") if "cursor" in fields else None, limit,
                 consistency(body.get("atLeastRevision")))


def parse_batch(body: Any, limit: int) -> list[Check | ChatAuthzError]:
    """/authorize/batch: each check parsed on its own (a bad one is that item's error)."""
    body = require_object(body)
    reject_unknown(body, {"checks"})
    checks = body.get("checks")
    if not isinstance(checks, list) or not 1 <= len(checks) <= limit:
        raise BadRequestError.field("checks", f"The checks field must be a list of 1 to {limit} checks.")
    parsed: list[Check | ChatAuthzError] = []
    for check in checks:
        try:
            parsed.append(parse_check(check))
        except ChatAuthzError as exc:
            parsed.append(exc)
    return parsed


def batch_body(results: list[dict[str, Any] | ChatAuthzError]) -> dict[str, Any]:
    return {"data": {"results": [{"error": r.to_dict()} if isinstance(r, ChatAuthzError) else r
                                 for r in results]}}


def error_body(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """The one error envelope: (status, {"error": {code, message, details?}}); anything that is
    not a ChatAuthzError is a 500 that says nothing of its cause (the log has it)."""
    if isinstance(exc, ChatAuthzError):
        return exc.status, {"error": exc.to_dict()}
    return 500, {"error": {"code": "ERR_INTERNAL", "message": INTERNAL}}


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
