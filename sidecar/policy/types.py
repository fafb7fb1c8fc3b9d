"""Typed, immutable views of the policy files. Imports nothing of the sidecar but errors."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ARRAY_TYPES = ("stringArray", "rolesStringArray", "customStringArray")
VALUE_TYPES = ("allowDeny", "mode") + ARRAY_TYPES
MODE_VALUES = ("all", "friends")
ALLOW_DENY = ("allow", "deny")


@dataclass(frozen=True)
class PermissionDef:
    """One catalogue key of one layer ("role" or "scope")."""

    key: str
    layer: str
    type: str
    default: Any
    title: str
    values: tuple[str, ...] | None = None
    fact: str | None = None
    when: dict[str, tuple[str, ...]] = field(default_factory=dict)
    target_required: bool = False

    @property
    def action(self) -> str:
        return self.key.split(".", 1)[0]

    @property
    def is_action(self) -> bool:
        return "." not in self.key

    def available_values(self) -> list[str] | None:
        if self.type == "allowDeny":
            return list(ALLOW_DENY)
        if self.type == "mode":
            return list(MODE_VALUES)
        return list(self.values) if self.values is not None else None


@dataclass(frozen=True)
class Feature:
    """A restricted-feature key (bare name, wire form `u.<name>`) and the actions it gates."""

    key: str
    actions: tuple[str, ...]
    title: str


@dataclass(frozen=True)
class Action:
    """What POST /authorize may name, and which keys of each layer decide it."""

    name: str
    role_key: bool
    scope_key: bool
    target_required: bool
    role_constraints: tuple[PermissionDef, ...]
    scope_constraints: tuple[PermissionDef, ...]


@dataclass(frozen=True)
class RoleDef:
    role: str
    name: str
    description: str | None = None
    metadata: dict[str, Any] | None = None
    settings: dict[str, Any] | None = None
    permissions: dict[str, Any] = field(default_factory=dict)
    restricted_features: frozenset[str] = frozenset()
    source: str = ""


@dataclass(frozen=True)
class ScopeDef:
    scope: str
    rank: int
    description: str
    permissions: dict[str, Any]
    source: str = ""


@dataclass(frozen=True)
class PolicySet:
    """Everything the policy files say, validated."""

    role_keys: dict[str, PermissionDef]
    scope_keys: dict[str, PermissionDef]
    features: dict[str, Feature]
    actions: dict[str, Action]
    roles: dict[str, RoleDef]
    scopes: dict[str, ScopeDef]
    model_text: str
    content_hash: str

    def keys_of(self, layer: str) -> dict[str, PermissionDef]:
        return self.role_keys if layer == "role" else self.scope_keys
