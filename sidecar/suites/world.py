"""A test world (users, roles, groups) in YAML -> the ops the management API would write. Pure.

    users:  {uid: role}
    roles:  {role: {name?, description?, permissions?: {key: value}, restrictedFeatures?: [u.key]}}
            (a role the policy files lack is created at runtime; a file role gets runtime edits)
    groups: {guid: {owner: uid, members?: {uid: scope}, bans?: [uid],
                    overrides?: {scope: {key: value}}}}
As PUT /groups/{guid} does, the owner is also an admin member. Problems go to `problem(line, msg)`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from sidecar.policy.loader import ID_PATTERN
from sidecar.policy.types import PolicySet
from sidecar.policy.values import normalize_value
from sidecar.policy.yamlio import LineDict
from sidecar.state import Op
from sidecar.validation import canonical_id

Problem = Callable[[int, str], None]
ROLE_FIELDS = {"name", "description", "permissions", "restrictedFeatures"}
GROUP_FIELDS = {"owner", "members", "bans", "overrides"}


def checked_fields(problem: Problem, spec: LineDict, allowed: set[str], where: str) -> None:
    """Report every key of spec that is not allowed, at its line."""
    for key in spec:
        if key not in allowed:
            problem(spec.line_of(key), f"{where}: unknown field {key!r}; allowed: {', '.join(sorted(allowed))}")


class WorldBuilder:
    def __init__(self, policy: PolicySet, problem: Problem) -> None:
        self.policy = policy
        self.problem = problem

    def ops(self, world: Any, line: int, shared: Iterable[Op]) -> list[Op]:
        """The world's ops (after `shared`, whose runtime roles count as known)."""
        if world is None:
            return []
        if not isinstance(world, LineDict):
            self.problem(line, "world must be a mapping of users, roles and groups")
            return []
        checked_fields(self.problem, world, {"users", "roles", "groups"}, "world")
        roles = self._mapping(world, "roles")
        known = set(self.policy.roles) | {"default"} | {op["role"] for op in shared if op["op"] == "put_role"}
        known |= {r for r in roles if isinstance(r, str) and ID_PATTERN.fullmatch(r)}
        ops: list[Op] = []
        for role, spec in roles.items():
            ops += self._role(role, spec, roles.line_of(role), known)
        users = self._mapping(world, "users")
        for raw_uid, role in users.items():
            uid = self._id(raw_uid, users.line_of(raw_uid), "users: uid")
            if uid is None:
                continue
            if not isinstance(role, str):
                self.problem(users.line_of(raw_uid), "users: each entry must be uid: role")
            elif role not in known:
                self.problem(users.line_of(uid), f"users: {uid} has role {role!r}, which does not exist "
                             "(define it under world.roles or in roles.yaml)")
            else:
                ops.append({"op": "put_user", "uid": uid, "role": role})
        groups = self._mapping(world, "groups")
        for guid, spec in groups.items():
            ops += self._group(guid, spec, groups.line_of(guid), known)
        return ops

    def _mapping(self, spec: LineDict, name: str) -> LineDict:
        value = spec.get(name)
        if value is not None and not isinstance(value, LineDict):
            self.problem(spec.line_of(name), f"{name} must be a mapping")
        return value if isinstance(value, LineDict) else _empty(spec.line_of(name))

    def _role(self, role: Any, spec: Any, line: int, known: set[str]) -> list[Op]:
        if not isinstance(role, str) or not ID_PATTERN.fullmatch(role):
            self.problem(line, f"roles: role id {role!r} must be 1-100 characters of a-z, 0-9, - and _")
            return []
        spec = _empty(line) if spec is None else spec
        if not isinstance(spec, LineDict):
            self.problem(line, f"role {role}: must be a mapping")
            return []
        checked_fields(self.problem, spec, ROLE_FIELDS, f"role {role}")
        ops: list[Op] = []
        if role not in self.policy.roles or "name" in spec or "description" in spec:
            record = {"role": role, "name": str(spec.get("name") or role), "createdAt": 0}
            if isinstance(spec.get("description"), str):
                record["description"] = spec["description"]
            ops.append({"op": "put_role", "role": role, "record": record})
        values = self._values(spec, "permissions", self.policy.role_keys, known, f"role {role}")
        if values:
            ops.append({"op": "set_role_permissions", "role": role, "values": values})
        if "restrictedFeatures" in spec:
            features = self._features(role, spec)
            if features is not None:
                ops.append({"op": "set_restricted_features", "role": role, "features": features})
        return ops

    def _features(self, role: str, spec: LineDict) -> list[str] | None:
        line = spec.line_of("restrictedFeatures")
        listed = spec.get("restrictedFeatures") or []
        if not isinstance(listed, list) or not all(isinstance(f, str) for f in listed):
            self.problem(line, f"role {role}: restrictedFeatures must be a list of feature keys")
            return None
        bare = [f.removeprefix("u.") for f in listed]
        unknown = [f for f, b in zip(listed, bare, strict=True) if b not in self.policy.features]
        for feature in unknown:
            self.problem(line, f"role {role}: unknown feature {feature!r}")
        if role == "default" and bare:
            self.problem(line, "role default: default cannot be restricted")
        return None if unknown or (role == "default" and bare) else sorted(set(bare))

    def _values(self, spec: LineDict, name: str, keys: dict[str, Any], known: set[str] | None,
                owner: str) -> dict[str, Any]:
        perms = self._mapping(spec, name)
        values: dict[str, Any] = {}
        for key, value in perms.items():
            if key not in keys:
                self.problem(perms.line_of(key), f"{owner}: unknown permission key {key!r}")
                continue
            try:
                values[key] = normalize_value(keys[key], value, known)
            except ValueError as exc:
                self.problem(perms.line_of(key), f"{owner}: {exc}")
        return values

    def _id(self, value: Any, line: int, what: str) -> str | None:
        """The canonical id (HTTP's canonicaliser), or None with a problem reported."""
        canonical = canonical_id(value)
        if canonical is None:
            self.problem(line, f"{what} {value!r} must be 1-100 characters of letters, digits, - and _")
        return canonical

    def _group(self, raw_guid: Any, spec: Any, line: int, known: set[str]) -> list[Op]:
        guid = self._id(raw_guid, line, "groups: guid")
        if guid is None:
            return []
        if not isinstance(spec, LineDict) or "owner" not in spec:
            self.problem(line, f"group {guid}: must be a mapping with at least owner: uid")
            return []
        checked_fields(self.problem, spec, GROUP_FIELDS, f"group {guid}")
        owner = self._id(spec["owner"], spec.line_of("owner"), f"group {guid}: owner")
        if owner is None:
            return []
        ops: list[Op] = [{"op": "put_group", "guid": guid, "owner": owner},
                         {"op": "put_member", "guid": guid, "uid": owner, "scope": "admin"}]
        members = self._mapping(spec, "members")
        member_ids: set[str] = set()
        for raw_uid, scope in members.items():
            uid = self._id(raw_uid, members.line_of(raw_uid), f"group {guid}: member")
            if uid is None:
                continue
            member_ids.add(uid)
            if not isinstance(scope, str) or scope not in self.policy.scopes:
                self.problem(members.line_of(raw_uid), f"group {guid}: member {uid} has unknown scope "
                             f"{scope!r}; scopes are {', '.join(self.policy.scopes)}")
            elif uid == owner and scope != "admin":
                self.problem(members.line_of(raw_uid), f"group {guid}: {uid} owns the group and stays admin")
            else:
                ops.append({"op": "put_member", "guid": guid, "uid": uid, "scope": scope})
        raw_bans = spec.get("bans") or []
        if not isinstance(raw_bans, list):
            self.problem(spec.line_of("bans"), f"group {guid}: bans must be a list of uids")
            raw_bans = []
        bans = [self._id(u, spec.line_of("bans"), f"group {guid}: banned uid") for u in raw_bans]
        for uid in bans:
            if uid is None:
                continue
            if uid == owner or uid in member_ids:
                self.problem(spec.line_of("bans"), f"group {guid}: {uid} cannot be both "
                             f"{'the owner' if uid == owner else 'a member'} and banned")
            else:
                ops.append({"op": "ban", "guid": guid, "uid": uid})
        overrides = self._mapping(spec, "overrides")
        for scope in overrides:
            if scope not in self.policy.scopes:
                self.problem(overrides.line_of(scope), f"group {guid}: overrides: unknown scope {scope!r}")
                continue
            values = self._values(overrides, scope, self.policy.scope_keys, known, f"group {guid} scope {scope}")
            if values:
                ops.append({"op": "set_scope_permissions", "guid": guid, "scope": scope, "values": values})
        return ops


def _empty(line: int) -> LineDict:
    empty = LineDict()
    empty.line, empty.key_lines = line, {}
    return empty
