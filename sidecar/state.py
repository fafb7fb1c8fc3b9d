"""Runtime state in memory, changed only by applying write operations (ops).

An op is a plain JSON-able dict {"op": name, ...}. Stores persist the same ops atomically and
journal them, so every worker and sidecar replays them into its own RuntimeState. Pure: no I/O.
"""
from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

Op = dict[str, Any]


class OpKind(NamedTuple):
    fields: tuple[str, ...]  # besides "op" (and "before", which the change log adds)
    policy: bool             # changes what Casbin evaluates (the engine recompiles its lines)


# The one registry of ops: RuntimeState.apply, the change log's `before` and both stores handle
# exactly these (tests/test_op_registry.py), and a store refuses any op not shaped like one.
OPS: Mapping[str, OpKind] = MappingProxyType({
    "put_role": OpKind(("role", "record"), True),
    "delete_role": OpKind(("role",), True),
    "set_role_permissions": OpKind(("role", "values"), True),
    "unset_role_permission": OpKind(("role", "key"), True),
    "set_restricted_features": OpKind(("role", "features"), True),
    "put_user": OpKind(("uid", "role"), False),
    "delete_user": OpKind(("uid",), False),
    "put_group": OpKind(("guid", "owner"), False),
    "delete_group": OpKind(("guid",), True),
    "put_member": OpKind(("guid", "uid", "scope"), False),
    "delete_member": OpKind(("guid", "uid"), False),
    "ban": OpKind(("guid", "uid"), False),
    "unban": OpKind(("guid", "uid"), False),
    "set_scope_permissions": OpKind(("guid", "scope", "values"), True),
    "unset_scope_permission": OpKind(("guid", "scope", "key"), True),
})
POLICY_OPS = frozenset(name for name, kind in OPS.items() if kind.policy)


def op_problem(op: Any) -> str | None:
    """Why `op` is not an op of the registry (None when it is one)."""
    if not isinstance(op, dict):
        return f"an op must be an object, not {type(op).__name__}"
    kind = OPS.get(op.get("op"))  # type: ignore[arg-type]
    if kind is None:
        return f"unknown op {op.get('op')!r}"
    keys = set(op) - {"op", "before"}
    if keys != set(kind.fields):
        return f"op {op['op']} has fields {sorted(keys)}, not {sorted(kind.fields)}"
    return None


def check_ops(ops: list[Op]) -> list[Op]:
    """The ops, after checking each against the registry (ValueError otherwise)."""
    for op in ops:
        problem = op_problem(op)
        if problem is not None:
            raise ValueError(problem)
    return ops


@dataclass
class RuntimeState:
    revision: int = 0
    epoch: str = ""  # the store's history this state belongs to: tokens are "<epoch>:<revision>"
    policy_generation: int = 0
    roles: dict[str, dict[str, Any]] = field(default_factory=dict)
    role_permissions: dict[str, dict[str, Any]] = field(default_factory=dict)
    restricted: dict[str, frozenset[str]] = field(default_factory=dict)
    users: dict[str, str] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)
    members: dict[str, dict[str, str]] = field(default_factory=dict)
    bans: dict[str, set[str]] = field(default_factory=dict)
    overrides: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    # uid -> the groups it is a member or the owner of: built on first use (a list question),
    # then kept current by every op; a store that loads tables directly never pays for it.
    _groups_by_user: dict[str, set[str]] | None = field(default=None, repr=False, compare=False)

    @property
    def whole(self) -> bool:
        """Does this state hold every entity (a working set holds a cache of them)?"""
        return True

    def apply_all(self, ops: list[Op], revision: int) -> None:
        """Apply one committed write (all its ops) and move to its revision; an op the registry
        does not know (a journal written by something else) applies none of them (ValueError)."""
        for op in check_ops(ops):
            self.apply(op)
        self.revision = revision

    def apply(self, op: Op) -> None:
        handler = getattr(self, "_" + op["op"], None) if op["op"] in OPS else None
        if handler is None:
            raise ValueError(f"unknown op {op['op']!r}")
        handler(op)
        if op["op"] in POLICY_OPS:
            self.policy_generation += 1

    # -- what the engine, the plans and the views read (a WorkingSet answers the same) ----------
    def role_of(self, uid: str) -> str:
        """uid's role ("default" when none was assigned)."""
        return self.users.get(uid, "default")

    def assigned(self, uid: str) -> bool:
        """Was uid given a role (even "default")?"""
        return uid in self.users

    def users_with_role(self, role: str) -> int:
        return sum(1 for held in self.users.values() if held == role)

    def owner_of(self, guid: str) -> str | None:
        """The owner of guid; None when there is no such group."""
        return self.owners.get(guid)

    def group_ids(self) -> Iterable[str]:
        return self.owners.keys()

    def members_of(self, guid: str) -> Mapping[str, str]:
        """uid -> scope of guid's members."""
        return self.members.get(guid, _NO_MEMBERS)

    def bans_of(self, guid: str) -> Collection[str]:
        return self.bans.get(guid, _NO_GROUPS)

    def scope_of(self, guid: str, uid: str) -> str | None:
        group = self.members.get(guid)
        return group.get(uid) if group else None

    def is_banned(self, guid: str, uid: str) -> bool:
        banned = self.bans.get(guid)
        return banned is not None and uid in banned

    def groups_of(self, uid: str) -> frozenset[str] | set[str]:
        """The groups uid is a member or the owner of (the index, built on first use)."""
        index = self._groups_by_user
        if index is None:
            index = {}
            for guid, members in self.members.items():
                for member in members:
                    index.setdefault(member, set()).add(guid)
            for guid, owner in self.owners.items():
                index.setdefault(owner, set()).add(guid)
            self._groups_by_user = index
        return index.get(uid, _NO_GROUPS)

    def _index_add(self, uid: str, guid: str) -> None:
        if self._groups_by_user is not None:
            self._groups_by_user.setdefault(uid, set()).add(guid)

    def _index_drop(self, uid: str, guid: str) -> None:
        """Unless uid is still the member or the owner of guid."""
        index = self._groups_by_user
        if index is None or uid in self.members.get(guid, ()) or self.owners.get(guid) == uid:
            return
        groups = index.get(uid)
        if groups is not None:
            groups.discard(guid)
            if not groups:
                del index[uid]

    # -- op handlers -----------------------------------------------------------------------
    def _put_role(self, op: Op) -> None:
        self.roles[op["role"]] = dict(op["record"])

    def _delete_role(self, op: Op) -> None:
        role = op["role"]
        self.roles.pop(role, None)
        self.role_permissions.pop(role, None)
        self.restricted.pop(role, None)
        for uid in [u for u, r in self.users.items() if r == role]:
            del self.users[uid]

    def _set_role_permissions(self, op: Op) -> None:
        self.role_permissions.setdefault(op["role"], {}).update(op["values"])

    def _unset_role_permission(self, op: Op) -> None:
        perms = self.role_permissions.get(op["role"], {})
        perms.pop(op["key"], None)
        if not perms:
            self.role_permissions.pop(op["role"], None)

    def _set_restricted_features(self, op: Op) -> None:
        self.restricted[op["role"]] = frozenset(op["features"])

    def _put_user(self, op: Op) -> None:
        self.users[op["uid"]] = op["role"]

    def _delete_user(self, op: Op) -> None:
        self.users.pop(op["uid"], None)

    def _put_group(self, op: Op) -> None:
        guid = op["guid"]
        before = self.owners.get(guid)
        self.owners[guid] = op["owner"]
        self._index_add(op["owner"], guid)
        if before is not None and before != op["owner"]:
            self._index_drop(before, guid)

    def _delete_group(self, op: Op) -> None:
        guid = op["guid"]
        had = {*self.members.get(guid, ()), *([self.owners[guid]] if guid in self.owners else [])}
        for table in (self.owners, self.members, self.bans, self.overrides):
            table.pop(guid, None)
        for uid in had:
            self._index_drop(uid, guid)

    def _put_member(self, op: Op) -> None:
        self.members.setdefault(op["guid"], {})[op["uid"]] = op["scope"]
        self._index_add(op["uid"], op["guid"])

    def _delete_member(self, op: Op) -> None:
        group = self.members.get(op["guid"])
        if group is not None:
            group.pop(op["uid"], None)
            if not group:
                del self.members[op["guid"]]
        self._index_drop(op["uid"], op["guid"])

    def _ban(self, op: Op) -> None:
        self._delete_member(op)
        self.bans.setdefault(op["guid"], set()).add(op["uid"])

    def _unban(self, op: Op) -> None:
        banned = self.bans.get(op["guid"])
        if banned is not None:
            banned.discard(op["uid"])
            if not banned:
                del self.bans[op["guid"]]

    def _set_scope_permissions(self, op: Op) -> None:
        self.overrides.setdefault(op["guid"], {}).setdefault(op["scope"], {}).update(op["values"])

    def _unset_scope_permission(self, op: Op) -> None:
        scopes = self.overrides.get(op["guid"], {})
        values = scopes.get(op["scope"], {})
        values.pop(op["key"], None)
        if not values:
            scopes.pop(op["scope"], None)
        if not scopes:
            self.overrides.pop(op["guid"], None)


_NO_GROUPS: frozenset[str] = frozenset()
_NO_MEMBERS: Mapping[str, str] = MappingProxyType({})


def with_before(state: RuntimeState, op: Op) -> Op:
    """The op plus `before`: what it replaces, for the change log (state is not changed)."""
    return {**op, "before": _before(state, op)}


def _before(state: RuntimeState, op: Op) -> Any:
    name = op["op"]
    if name in ("put_role", "delete_role"):
        before: dict[str, Any] = {"record": state.roles.get(op["role"])}
        if name == "delete_role":
            before["permissions"] = state.role_permissions.get(op["role"])
            before["restrictedFeatures"] = sorted(state.restricted.get(op["role"], ()))
            before["users"] = state.users_with_role(op["role"])
        return before
    if name in ("set_role_permissions", "unset_role_permission"):
        current = state.role_permissions.get(op["role"], {})
        return {k: current.get(k) for k in op.get("values", {op.get("key"): None})}
    if name == "set_restricted_features":
        restricted = state.restricted.get(op["role"])
        return sorted(restricted) if restricted is not None else None
    if name in ("put_user", "delete_user"):
        return {"role": (state.role_of(op["uid"]) if state.assigned(op["uid"]) else None)}
    if name in ("put_group", "delete_group"):
        guid = op["guid"]
        return {"owner": state.owner_of(guid), "members": len(state.members_of(guid)),
                "bans": len(state.bans_of(guid)), "overrides": state.overrides.get(guid)}
    if name in ("put_member", "delete_member", "ban", "unban"):
        return {"scope": state.scope_of(op["guid"], op["uid"]), "banned": state.is_banned(op["guid"], op["uid"])}
    if name in ("set_scope_permissions", "unset_scope_permission"):
        current = state.overrides.get(op["guid"], {}).get(op["scope"], {})
        return {k: current.get(k) for k in op.get("values", {op.get("key"): None})}
    raise ValueError(f"unknown op {name!r}")
