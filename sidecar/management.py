"""Management operations: parse_* reads a body (before any lock; shapes only), plan_* decides
on it. Pure.

A plan runs inside the store's write transaction on one WriteContext (the engine and policy in
force, the caught-up state), so its checks and its ops are atomic; it returns (ops, result),
the result being what the response needs. Views (role objects, permission lists) are here too.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, NamedTuple

from sidecar.errors import BadRequestError, ConflictError, NotFoundError, RefusedError
from sidecar.policy import PolicySet
from sidecar.policy.values import normalize_value
from sidecar.rules import effective_restrictions, resolve_value
from sidecar.state import Op, RuntimeState
from sidecar.validation import clean_id, metadata, optional_list, reject_unknown, require_object, settings, text

if TYPE_CHECKING:
    from sidecar.core import WriteContext

Planned = tuple[list[Op], Any]

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


def parse_new_role(body: Any) -> dict[str, Any]:
    """POST /roles: the new role's record (its id canonical; createdAt is set by the plan)."""
    body = require_object(body)
    reject_unknown(body, {"role", *ROLE_FIELDS})
    return {"role": clean_id(body.get("role"), "role"), "name": text(body, "name", 100, required=True),
            "description": text(body, "description", 255), "metadata": metadata(body),
            "settings": settings(body)}


def plan_create_role(tx: WriteContext, record: dict[str, Any], max_roles: int) -> Planned:
    """Result: the new role's id."""
    policy, state, role = tx.policy, tx.state, record["role"]
    if role in policy.roles or role in state.roles:
        raise ConflictError(f"The role {role} already exists.", code="ERR_ROLE_ALREADY_EXISTS", status=409)
    if len(all_role_ids(policy, state)) >= max_roles:
        raise RefusedError(f"An app may have at most {max_roles} roles; delete one first.",
                           code="ERR_PLAN_QUOTA_RESTRICTION")
    return [{"op": "put_role", "role": role, "record": {**record, "createdAt": int(time.time())}}], role


class RoleUpdate(NamedTuple):
    changes: dict[str, Any]  # the fields given (None: not given)
    unset: list[str]


def parse_role_update(body: Any) -> RoleUpdate:
    body = require_object(body)
    reject_unknown(body, {*ROLE_FIELDS, "unset"})
    unset = optional_list(body, "unset")
    if any(not isinstance(u, str) or u not in UNSETTABLE for u in unset):
        raise BadRequestError.field("unset", f"The unset field may only list {', '.join(UNSETTABLE)}.")
    changes = {"name": text(body, "name", 100), "description": text(body, "description", 255),
               "metadata": metadata(body), "settings": settings(body)}
    name = changes["name"]
    if "name" in body and isinstance(name, str) and not name.strip():
        raise BadRequestError.field("name", "The name must be a non-empty string.")
    for field_name in unset:
        if field_name in body:
            raise BadRequestError.field("unset", f"{field_name} cannot be both set and unset.")
    return RoleUpdate(changes, unset)


def plan_update_role(tx: WriteContext, role: str, update: RoleUpdate) -> Planned:
    record = {k: v for k, v in role_view(tx.policy, tx.state, role).items() if k != "source"}
    for field_name in update.unset:
        record[field_name] = None
    record.update({k: v for k, v in update.changes.items() if v is not None})
    record["updatedAt"] = int(time.time())
    record.setdefault("createdAt", 0)
    return [{"op": "put_role", "role": role, "record": record}], None


def plan_delete_role(tx: WriteContext, role: str) -> Planned:
    """Result: how many users held the role (they now have the default role)."""
    policy, state = tx.policy, tx.state
    if role == "default":
        raise RefusedError("The default role cannot be deleted.", code="ERR_ROLE_DELETE_DENIED")
    if role in policy.roles:
        raise RefusedError(f"The role {role} is defined in the policy files ({policy.roles[role].source}); "
                           "remove it there, it cannot be deleted at runtime.", code="ERR_ROLE_DELETE_DENIED")
    if role not in state.roles:
        raise role_not_found(role)
    return [{"op": "delete_role", "role": role}], state.users_with_role(role)


def plan_set_role_permissions(tx: WriteContext, role: str, permissions: dict[str, Any]) -> Planned:
    role_view(tx.policy, tx.state, role)
    values = checked_permissions(permissions, tx.policy.role_keys, all_role_ids(tx.policy, tx.state))
    return [{"op": "set_role_permissions", "role": role, "values": values}], None


def plan_unset_role_permission(tx: WriteContext, role: str, key: str) -> Planned:
    role_view(tx.policy, tx.state, role)
    if key not in tx.state.role_permissions.get(role, {}):
        raise NotFoundError(f"The role {role} has no runtime value for permission {key}.",
                            code="ERR_PERMISSION_NOT_FOUND")
    return [{"op": "unset_role_permission", "role": role, "key": key}], None


def permission_rows(policy: PolicySet, state: RuntimeState, layer: str, subject: str,
                    guid: str | None) -> list[dict[str, Any]]:
    """CometChat's permDef list for one role or one scope (in a group), with each key's
    effective value and where it comes from."""
    rows = []
    for key, defn in policy.keys_of(layer).items():
        value, source = resolve_value(policy, state, layer, subject, guid, key)
        rows.append({"id": key, "type": layer, "title": defn.title, "dataType": defn.type,
                     "availableValues": defn.available_values(), "defaultValue": defn.default,
                     "value": value, "source": source})
    return rows


def role_permissions_view(policy: PolicySet, state: RuntimeState, role: str) -> list[dict[str, Any]]:
    role_view(policy, state, role)
    return permission_rows(policy, state, "role", role, None)


def explicit_role_permissions(state: RuntimeState, role: str) -> dict[str, Any]:
    return dict(state.role_permissions.get(role, {}))


def parse_permissions(body: Any) -> dict[str, Any]:
    """A {"permissions": {key: value}} body: the mapping (its keys and values are the plan's to check)."""
    body = require_object(body)
    reject_unknown(body, {"permissions"})
    if "permissions" not in body:
        raise BadRequestError.field("permissions", "The permissions field is required.")
    permissions = require_object(body["permissions"], "permissions")
    if not permissions:
        raise BadRequestError.field("permissions", "The permissions field must name at least one key.")
    return permissions


def checked_permissions(permissions: dict[str, Any], keys: dict[str, Any], roles: list[str] | None) -> dict[str, Any]:
    """Every key and value checked against the catalogue (all problems at once), normalised."""
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
def parse_user_role(body: Any) -> str:
    body = require_object(body)
    reject_unknown(body, {"role"})
    return clean_id(body.get("role"), "role")


def plan_set_user_role(tx: WriteContext, uid: str, role: str) -> Planned:
    state = tx.state
    if role not in tx.policy.roles and role not in state.roles:
        raise role_not_found(role)
    if state.role_of(uid) == role and (state.assigned(uid) or role == "default"):
        return [], None
    return [{"op": "put_user", "uid": uid, "role": role}], None


def user_view(state: RuntimeState, uid: str) -> dict[str, Any]:
    return {"uid": uid, "role": state.role_of(uid), "assigned": state.assigned(uid)}


def plan_delete_user(tx: WriteContext, uid: str) -> Planned:
    if not tx.state.assigned(uid):
        return [], None
    return [{"op": "delete_user", "uid": uid}], None


# -- restricted features (CometChat's older API) -------------------------------------------
class FeatureChange(NamedTuple):
    keys: list[str]   # as given ("u.ban" or "ban")
    field: str        # the body field they came from
    allow_all: bool = False


def parse_restrict_features(body: Any) -> FeatureChange:
    body = require_object(body)
    reject_unknown(body, {"featuresToRestrict"})
    return FeatureChange(_feature_list(body, "featuresToRestrict"), "featuresToRestrict")


def parse_allow_features(body: Any) -> FeatureChange:
    body = require_object(body)
    reject_unknown(body, {"featuresToAllow", "allowAll"})
    allow_all = body.get("allowAll", False)
    if not isinstance(allow_all, bool):
        raise BadRequestError.field("allowAll", "The allowAll field must be a boolean.")
    keys = [] if allow_all else _feature_list(body, "featuresToAllow")
    return FeatureChange(keys, "featuresToAllow", allow_all)


def _feature_list(body: dict[str, Any], field: str) -> list[str]:
    keys = body.get(field)
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
        raise BadRequestError.field(field, f"The {field} field must be a non-empty list of feature keys.")
    return keys


def _feature_keys(policy: PolicySet, change: FeatureChange) -> list[str]:
    """The change's features, bare and checked against the policy's."""
    keys, field = change.keys, change.field
    bare = [k.removeprefix("u.") for k in keys]
    unknown = [k for k, b in zip(keys, bare, strict=True) if b not in policy.features]
    if unknown:
        raise BadRequestError(f"Unknown feature key(s): {', '.join(unknown)}.",
                              details={field: [f"Unknown feature {k}." for k in unknown]})
    return list(dict.fromkeys(bare))


def plan_restrict_features(tx: WriteContext, role: str, change: FeatureChange) -> Planned:
    policy, state = tx.policy, tx.state
    role_view(policy, state, role)
    keys = _feature_keys(policy, change)
    if role == "default":
        raise BadRequestError.field("role", "The default role cannot be restricted.")
    current, _ = effective_restrictions(policy, state, role)
    return [{"op": "set_restricted_features", "role": role, "features": sorted(current | set(keys))}], None


def plan_allow_features(tx: WriteContext, role: str, change: FeatureChange) -> Planned:
    policy, state = tx.policy, tx.state
    role_view(policy, state, role)
    current, _ = effective_restrictions(policy, state, role)
    remaining = frozenset() if change.allow_all else current - set(_feature_keys(policy, change))
    if remaining == current:
        return [], None  # allowing what is not restricted changes nothing
    return [{"op": "set_restricted_features", "role": role, "features": sorted(remaining)}], None


def restricted_features_view(policy: PolicySet, state: RuntimeState, role: str) -> list[dict[str, Any]]:
    role_view(policy, state, role)
    features, source = effective_restrictions(policy, state, role)
    return [{"key": f"u.{key}", "title": policy.features[key].title,
             "actions": list(policy.features[key].actions), "source": source}
            for key in sorted(features) if key in policy.features]
