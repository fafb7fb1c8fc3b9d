"""Checks request bodies and ids; every problem becomes a 400 naming its field. Pure."""
from __future__ import annotations

import json
import re
from typing import Any, NamedTuple

from sidecar.errors import BadRequestError

ID_RE = re.compile(r"[A-Za-z0-9_-]{1,100}")  # ASCII only, checked before lowercasing; always fullmatch
MAX_METADATA_BYTES = 4096
MAX_CONTEXT_KEYS = 32
MAX_CONTEXT_STRING = 255
MAX_REVISION = 2**53  # the largest revision a client may name (a JSON number stays exact up to here)
MAX_PER_PAGE = 1000


def canonical_id(value: Any) -> str | None:
    """THE id canonicaliser (HTTP bodies, paths, headers, the CLI, suites, world files): the id
    lowercased when `value` is exactly 1-100 ASCII letters, digits, dashes and underscores, else
    None. fullmatch, never match + `$` (which accepts a trailing newline); checked before
    lowercasing ("\u212a".lower() is "k")."""
    if isinstance(value, str) and ID_RE.fullmatch(value):
        return value.lower()
    return None


def clean_id(value: Any, field: str) -> str:
    """An id (canonical_id) or a 400 naming the field."""
    if type(value) is str and ID_RE.fullmatch(value):  # canonical_id, inline: every request's ids
        return value.lower()
    canonical = canonical_id(value)  # a str subclass (an enum member, say)
    if canonical is not None:
        return canonical
    if not isinstance(value, str) or not value:
        raise BadRequestError.field(field, f"The {field} field is required and must be a string.")
    raise BadRequestError.field(field, f"The {field} may only contain letters, numbers, dashes and "
                                "underscores, and be at most 100 characters.")


def require_object(body: Any, field: str = "body") -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequestError.field(field, "The request body must be a JSON object.")
    return body


def reject_unknown(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadRequestError(f"Unknown field(s): {', '.join(map(str, unknown))}.",
                              details={str(k): [f"The {k} field is not allowed here."] for k in unknown})


def text(body: dict[str, Any], field: str, max_len: int, required: bool = False) -> str | None:
    value = body.get(field)
    if value is None:
        if required:
            raise BadRequestError.field(field, f"The {field} field is required.")
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise BadRequestError.field(field, f"The {field} must be a non-empty string.")
    if len(value) > max_len:
        raise BadRequestError.field(field, f"The {field} may not be greater than {max_len} characters.")
    return value


def metadata(body: dict[str, Any], field: str = "metadata") -> dict[str, Any] | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadRequestError.field(field, f"The {field} must be a JSON object.")
    if len(json.dumps(value, separators=(",", ":"))) > MAX_METADATA_BYTES:
        raise BadRequestError.field(field, f"The {field} may not be larger than {MAX_METADATA_BYTES} "
                                    "bytes as JSON.")
    return value


def settings(body: dict[str, Any]) -> dict[str, str] | None:
    value = body.get("settings")
    if value is None:
        return None
    allowed = {"listUsers": ("all", "friendsOnly"), "sendMessagesTo": ("all", "friendsOnly")}
    if not isinstance(value, dict) or set(value) - set(allowed):
        raise BadRequestError.field("settings", "The settings may only hold listUsers and sendMessagesTo.")
    for key, choice in value.items():
        if choice not in allowed[key]:
            raise BadRequestError.field(f"settings.{key}", f"The settings.{key} must be all or friendsOnly.")
    return dict(value)


def context(value: Any) -> dict[str, Any]:
    """The facts of an authorize request: a flat object of strings, numbers and booleans."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequestError.field("context", "The context must be a JSON object.")
    if len(value) > MAX_CONTEXT_KEYS:
        raise BadRequestError.field("context", f"The context may hold at most {MAX_CONTEXT_KEYS} facts.")
    for key, fact in value.items():
        if not isinstance(fact, (str, bool, int, float)) or (isinstance(fact, str) and len(fact) > MAX_CONTEXT_STRING):
            raise BadRequestError.field(f"context.{key}", "Each fact must be a string (at most 255 "
                                        "characters), a number or a boolean.")
    return value


def revision(value: Any, field: str = "atLeastRevision") -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_REVISION:
        raise BadRequestError.field(field, f"The {field} must be a non-negative integer.")
    return value


class Token(NamedTuple):
    """A consistency token "<epoch>:<revision>", as write answers and decisions give it."""
    epoch: str
    revision: int


def format_token(epoch: str, revision: int) -> str:
    """The consistency token of `revision` in `epoch` (epoch "none": no state loaded yet)."""
    return f"{epoch or 'none'}:{revision}"


TOKEN_RE = re.compile(r"([0-9a-z]{1,64}):([0-9]{1,16})")  # whole string only (fullmatch)


def consistency(value: Any, field: str = "atLeastRevision") -> int | Token | None:
    """A revision of the store's current epoch (an integer), or a token "<epoch>:<revision>"."""
    match = TOKEN_RE.fullmatch(value) if isinstance(value, str) else None
    if match and int(match[2]) <= MAX_REVISION:
        return Token(match[1], int(match[2]))
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_REVISION):
        return value
    raise BadRequestError.field(field, f"The {field} must be a non-negative integer or a token "
                                "'<epoch>:<revision>' as a write answered it.")


def is_ascii_number(raw: str) -> bool:
    """Digits 0-9 only ("\u00b2".isdigit() is true, but int() refuses it)."""
    return raw.isascii() and raw.isdigit()


def optional_list(body: dict[str, Any], field: str) -> list[Any]:
    """A list field that may be absent or null (then empty); anything else but a list is a 400."""
    value = body.get(field)
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadRequestError.field(field, f"The {field} field must be a list.")
    return value


def paging(args: dict[str, Any], max_per_page: int = MAX_PER_PAGE) -> tuple[int, int]:
    """perPage (default 100, at most max_per_page) and page (default 1)."""
    def number(name: str, default: int, high: int) -> int:
        raw = args.get(name)
        if raw is None or raw == "":
            return default
        if not is_ascii_number(str(raw)) or not 1 <= int(raw) <= high:
            raise BadRequestError.field(name, f"The {name} must be an integer from 1 to {high}.")
        return int(raw)
    return number("perPage", 100, max_per_page), number("page", 1, 10**9)
