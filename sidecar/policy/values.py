"""Checks one permission value against its catalogue definition (files and API share this)."""
from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sidecar.policy.types import ALLOW_DENY, ARRAY_TYPES, MODE_VALUES, PermissionDef

MAX_ARRAY_ITEMS = 100
MAX_ITEM_LENGTH = 255


def normalize_value(defn: PermissionDef, value: Any, known_roles: Collection[str] | None = None) -> Any:
    """Return the value in canonical form, or raise ValueError saying what is wrong.

    Arrays accept a plain string as a one-item list (CometChat's examples do this);
    `null` and `[]` both mean unrestricted and are stored as None.
    """
    if defn.type in ("allowDeny", "mode"):
        allowed = ALLOW_DENY if defn.type == "allowDeny" else MODE_VALUES
        if not isinstance(value, str) or value not in allowed:
            raise ValueError(f"{defn.key} must be one of {', '.join(allowed)}; got {_show(value)}")
        return value
    if defn.type not in ARRAY_TYPES:
        raise ValueError(f"{defn.key} has unknown type {defn.type}")
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise ValueError(f"{defn.key} must be a list of strings or null; got {_show(value)}")
    if len(value) > MAX_ARRAY_ITEMS:
        raise ValueError(f"{defn.key} may hold at most {MAX_ARRAY_ITEMS} values")
    items: list[str] = []
    for item in value:
        if not isinstance(item, str) or not item or len(item) > MAX_ITEM_LENGTH:
            raise ValueError(f"{defn.key} values must be non-empty strings of at most "
                             f"{MAX_ITEM_LENGTH} characters; got {_show(item)}")
        if defn.values is not None and item not in defn.values:
            raise ValueError(f"{defn.key} does not allow {item!r}; allowed: {', '.join(defn.values)}")
        if defn.type == "rolesStringArray" and known_roles is not None and item not in known_roles:
            raise ValueError(f"{defn.key} names role {item!r}, which does not exist")
        if item not in items:
            items.append(item)
    return items or None


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
