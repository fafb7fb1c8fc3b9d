"""Shared by the store contract tests (SQLite and Redis): one scripted run of every op kind,
roles, permissions, features, users, groups, members, bans and overrides, including ops that
undo earlier ones (a deleted role's users, a deleted group's members, bans and overrides), and
the helpers that compare states."""
from __future__ import annotations

from typing import Any

from sidecar.state import Op, RuntimeState

FIELDS = ("revision", "roles", "role_permissions", "restricted", "users", "owners", "members", "bans",
          "overrides")


def fields(state: RuntimeState) -> dict[str, Any]:
    """What a state holds, for comparing two states."""
    return {name: getattr(state, name) for name in FIELDS}


def in_memory(ops: list[Op], revision: int | None = None) -> RuntimeState:
    """The ops applied to a fresh state (at `revision`, when given)."""
    state = RuntimeState()
    for op in ops:
        state.apply(op)
    if revision is not None:
        state.revision = revision
    return state



EVERY_OP: list[Op] = [
    {"op": "put_role", "role": "agent", "record": {"role": "agent", "name": "Agent", "metadata": {"a": [1, 2]},
                                                   "createdAt": 5}},
    {"op": "put_role", "role": "temp", "record": {"role": "temp", "name": "Temp", "createdAt": 6}},
    {"op": "set_role_permissions", "role": "agent",
     "values": {"createGroup": "deny", "sendMessage.allowedMessageTypes": ["text", "image"],
                "listUsers.allowedRoles": None, "sendMessage.mode": "friends"}},
    {"op": "set_role_permissions", "role": "agent", "values": {"blockUser": "deny"}},
    {"op": "set_role_permissions", "role": "temp", "values": {"blockUser": "deny"}},
    {"op": "unset_role_permission", "role": "agent", "key": "sendMessage.mode"},
    {"op": "set_role_permissions", "role": "support", "values": {"editProfile": "deny"}},
    {"op": "unset_role_permission", "role": "support", "key": "editProfile"},
    {"op": "set_restricted_features", "role": "agent", "features": ["joinGroup", "createMessage"]},
    {"op": "set_restricted_features", "role": "restricted", "features": []},
    {"op": "set_restricted_features", "role": "temp", "features": ["listUsers"]},
    {"op": "put_user", "uid": "u1", "role": "agent"},
    {"op": "put_user", "uid": "u2", "role": "temp"},
    {"op": "put_user", "uid": "u3", "role": "support"},
    {"op": "put_user", "uid": "u4", "role": "agent"},
    {"op": "put_user", "uid": "u8", "role": "temp"},
    {"op": "delete_user", "uid": "u4"},
    {"op": "delete_role", "role": "temp"},
    {"op": "put_group", "guid": "g1", "owner": "u1"},
    {"op": "put_group", "guid": "g2", "owner": "u3"},
    {"op": "put_member", "guid": "g1", "uid": "u1", "scope": "admin"},
    {"op": "put_member", "guid": "g1", "uid": "u3", "scope": "moderator"},
    {"op": "put_member", "guid": "g1", "uid": "u5", "scope": "participant"},
    {"op": "put_member", "guid": "g1", "uid": "u6", "scope": "participant"},
    {"op": "put_member", "guid": "g2", "uid": "u3", "scope": "admin"},
    {"op": "delete_member", "guid": "g1", "uid": "u6"},
    {"op": "ban", "guid": "g1", "uid": "u5"},
    {"op": "ban", "guid": "g1", "uid": "outsider"},
    {"op": "ban", "guid": "g1", "uid": "u7"},
    {"op": "unban", "guid": "g1", "uid": "u7"},
    {"op": "set_scope_permissions", "guid": "g1", "scope": "participant",
     "values": {"addMembers": "allow", "sendMessage.allowedMessageTypes": ["text"]}},
    {"op": "set_scope_permissions", "guid": "g1", "scope": "moderator", "values": {"deleteGroup": "allow"}},
    {"op": "set_scope_permissions", "guid": "g1", "scope": "moderator", "values": {"editGroup": "deny"}},
    {"op": "set_scope_permissions", "guid": "g2", "scope": "admin", "values": {"editGroup": "deny"}},
    {"op": "unset_scope_permission", "guid": "g1", "scope": "moderator", "key": "deleteGroup"},
    {"op": "set_scope_permissions", "guid": "g2", "scope": "participant", "values": {"kickMembers": "allow"}},
    {"op": "unset_scope_permission", "guid": "g2", "scope": "participant", "key": "kickMembers"},
    {"op": "put_group", "guid": "g3", "owner": "u9"},
    {"op": "put_member", "guid": "g3", "uid": "u9", "scope": "admin"},
    {"op": "put_member", "guid": "g3", "uid": "u1", "scope": "participant"},
    {"op": "ban", "guid": "g3", "uid": "u2"},
    {"op": "set_scope_permissions", "guid": "g3", "scope": "admin", "values": {"kickMembers": "deny"}},
    {"op": "delete_group", "guid": "g3"},
]
