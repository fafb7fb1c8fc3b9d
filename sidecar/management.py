"""Management operations as pure plans: (policy, state, validated input) -> ops, or an error.

Each plan runs inside the store's write transaction against caught-up state, so its checks
and its ops are atomic. Views (role objects, permission lists) are built here too.
"""
from __future__ import annotations

import time
from typing import Any

from sidecar.errors import BadRequestError, ConflictError, NotFoundError, RefusedError
from sidecar.policy import PolicySet
from sidecar.policy.values import normalize_value
from sidecar.state import Op, RuntimeState
from sidecar.validation import clean_id, metadata, reject_unknown, require_object, settings, text

ROLE_FIELDS = ("name", "description", "metadata", "settings")
UNSETTABLE = ("description", "metadata", "settings")


def role_not_found(role: str) -> NotFoundError:
    return NotFoundError(f"The role {role} does not exist, please make sure you have created a role "
                         f"with role id {role}.", code="ERR_ROLE_NOT_FOUND")


def all_role_ids(policy: PolicySet, state: RuntimeState) -> list[str]:
    return sorted(set(policy.roles) | set(state.roles))


def role_view(policy: PolicySet, state: RuntimeState, role: str) -> dict[str, Any]:
    """The role object in CometChat's shape, plus where it comes from."""
    record = state.roles.get(role)
    file_role = policy.roles.get(role)
    if record is None and file_role is None:
        raise role_not_found(role)
    if record is not None:
        view = {k: v for k, v in record.items() if v is not None}
        view["source"] = "policy file, edited at runtime" if file_role else "runtime"
        return view
    assert file_role is not None
    view = {"role": role, "name": file_role.name, "description": file_role.description,
            "metadata": file_role.metadata, "settings": file_role.settings, "createdAt": 0}
    view = {k: v for k, v in view.items() if v is not None}
    view["source"] = f"policy file {file_role.source}"
    return view


def plan_create_role(policy: PolicySet, state: RuntimeState, body: Any, max_roles: int) -> list[Op]:
    body = require_object(body)
    reject_unknown(body, {"role", *ROLE_FIELDS})
    role = clean_id(body.get("role"), "role")
    record = {"role": role, "name": text(body, "name", 100, required=True),
              "description": text(body, "description", 255), "metadata": metadata(body),
              "settings": settings(body), "createdAt": int(time.time())}
    if role in policy.roles or role in state.roles:
        raise ConflictError(f"The role {role} already exists.", code="ERR_ROLE_ALREADY_EXISTS", status=409)
    if len(all_role_ids(policy, state)) >= max_roles:
        raise RefusedError(f"An app may have at most {max_roles} roles; delete one first.",
                           code="ERR_PLAN_QUOTA_RESTRICTION")
    return [{"op": "put_role", "role": role, "record": record}]


def plan_update_role(policy: PolicySet, state: RuntimeState, role: str, body: Any) -> list[Op]:
    body = require_object(body)
    reject_unknown(body, {*ROLE_FIELDS, "unset"})
    record = {k: v for k, v in role_view(policy, state, role).items() if k != "source"}
    unset = body.get("unset") or []
    if not isinstance(unset, list) or any(u not in UNSETTABLE for u in unset):
        raise BadRequestError.field("unset", f"The unset field may only list {', '.join(UNSETTABLE)}.")
    changes = {"name": text(body, "name", 100), "description": text(body, "description", 255),
               "metadata": metadata(body), "settings": settings(body)}
    if "name" in body and changes["name"] is not None and not changes["name"].strip():
        raise BadRequestError.field("name", "The name must be a non-empty string.")
    for field_name in unset:
        if field_name in body:
            raise BadRequestError.field("unset", f"{field_name} cannot be both set and unset.")
        record[field_name] = None
    record.update({k: v for k, v in changes.items() if v is not None})
    record["updatedAt"] = int(time.time())
    record.setdefault("createdAt", 0)
    return [{"op": "put_role", "role": role, "record": record}]


def plan_delete_role(policy: PolicySet, state: RuntimeState, role: str) -> list[Op]:
    if role == "default":
        raise RefusedError("The default role cannot be deleted.", code="ERR_ROLE_DELETE_DENIED")
    if role in policy.roles:
        raise RefusedError(f"The role {role} is defined in the policy files ({policy.roles[role].source}); "
                           "remove it there, it cannot be deleted at runtime.", code="ERR_ROLE_DELETE_DENIED")
    if role not in state.roles:
        raise role_not_found(role)
    return [{"op": "delete_role", "role": role}]


def plan_set_role_permissions(policy: PolicySet, state: RuntimeState, role: str, body: Any) -> list[Op]:
    role_view(policy, state, role)
    permissions = require_object(require_object(body).get("permissions"), "permissions")
    reject_unknown(require_object(body), {"permissions"})
    if not permissions:
        raise BadRequestError.field("permissions", "The permissions field must name at least one key.")
    values = _checked_values(permissions, policy.role_keys, all_role_ids(policy, state))
    return [{"op": "set_role_permissions", "role": role, "values": values}]


def plan_unset_role_permission(policy: PolicySet, state: RuntimeState, role: str, key: str) -> list[Op]:
    role_view(policy, state, role)
    if key not in state.role_permissions.get(role, {}):
        raise NotFoundError(f"The role {role} has no runtime value for permission {key}.",
                            code="ERR_PERMISSION_NOT_FOUND")
    return [{"op": "unset_role_permission", "role": role, "key": key}]


def role_permissions_view(policy: PolicySet, state: RuntimeState, role: str) -> list[dict[str, Any]]:
    from sidecar.rules import resolve_value  # local: rules imports state only
    role_view(policy, state, role)
    rows = []
    for key, defn in policy.role_keys.items():
        value, source = resolve_value(policy, state, "role", role, None, key)
        rows.append({"id": key, "type": "role", "title": defn.title, "dataType": defn.type,
                     "availableValues": defn.available_values(), "defaultValue": defn.default,
                     "value": value, "source": source})
    return rows


def explicit_role_permissions(state: RuntimeState, role: str) -> dict[str, Any]:
    return dict(state.role_permissions.get(role, {}))


def _checked_values(permissions: dict[str, Any], keys: dict[str, Any], roles: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    details: dict[str, list[str]] = {}
    for key, value in permissions.items():
        if key not in keys:
            details[f"permissions.{key}"] = [f"Unknown permission {key}."]
            continue
        try:
            values[key] = normalize_value(keys[key], value, roles)
        except ValueError as exc:
            details[f"permissions.{key}"] = [str(exc)]
    if details:
        raise BadRequestError("Some permissions are invalid; nothing was changed.", details=details)
    return values


# -- users, groups, members ----------------------------------------------------------------
def plan_set_user_role(policy: PolicySet, state: RuntimeState, uid: str, body: Any) -> list[Op]:
    body = require_object(body)
    reject_unknown(body, {"role"})
    role = clean_id(body.get("role"), "role")
    if role not in policy.roles and role not in state.roles:
        raise role_not_found(role)
    if state.users.get(uid, "default") == role and (uid in state.users or role == "default"):
        return []
    return [{"op": "put_user", "uid": uid, "role": role}]


def user_view(state: RuntimeState, uid: str) -> dict[str, Any]:
    return {"uid": uid, "role": state.users.get(uid, "default"), "assigned": uid in state.users}


def plan_set_group(policy: PolicySet, state: RuntimeState, guid: str, body: Any) -> list[Op]:
    body = require_object(body)
    reject_unknown(body, {"owner"})
    owner = clean_id(body.get("owner"), "owner")
    if state.owners.get(guid) == owner:
        return []
    ops: list[Op] = [{"op": "put_group", "guid": guid, "owner": owner}]
    if state.is_banned(guid, owner):
        ops.insert(0, {"op": "unban", "guid": guid, "uid": owner})
    if state.scope_of(guid, owner) != "admin":
        ops.append({"op": "put_member", "guid": guid, "uid": owner, "scope": "admin"})
    return ops


def group_not_found(guid: str) -> NotFoundError:
    return NotFoundError(f"The group {guid} does not exist.", code="ERR_GUID_NOT_FOUND")


def group_view(state: RuntimeState, guid: str) -> dict[str, Any]:
    if guid not in state.owners and guid not in state.members:
        raise group_not_found(guid)
    return {"guid": guid, "owner": state.owners.get(guid), "membersCount": len(state.members.get(guid, {})),
            "bannedCount": len(state.bans.get(guid, ())), "hasOverrides": guid in state.overrides}


def plan_delete_group(state: RuntimeState, guid: str) -> list[Op]:
    group_view(state, guid)
    return [{"op": "delete_group", "guid": guid}]


def plan_set_member(policy: PolicySet, state: RuntimeState, guid: str, uid: str, body: Any) -> list[Op]:
    body = require_object(body)
    reject_unknown(body, {"scope"})
    scope = body.get("scope")
    if scope not in policy.scopes:
        raise BadRequestError.field("scope", f"The scope must be one of {', '.join(policy.scopes)}.")
    if state.is_banned(guid, uid):
        raise ConflictError(f"{uid} is banned from group {guid}; unban them first.",
                            code="ERR_BANNED_GROUPMEMBER")
    if state.scope_of(guid, uid) == scope:
        return []
    return [{"op": "put_member", "guid": guid, "uid": uid, "scope": scope}]


def plan_remove_member(state: RuntimeState, guid: str, uid: str) -> list[Op]:
    if state.scope_of(guid, uid) is None:
        raise ConflictError(f"{uid} is not a member of group {guid}.", code="ERR_NOT_A_MEMBER")
    if state.owners.get(guid) == uid:
        raise RefusedError(f"{uid} owns group {guid}; transfer ownership before removing them.",
                           code="ERR_GROUP_NO_CLEARANCE")
    return [{"op": "delete_member", "guid": guid, "uid": uid}]
