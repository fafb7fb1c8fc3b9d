"""Group plans and views: owners, members, bans and per-group scope overrides. Pure.

parse_* reads a body (before any lock), plan_* decides on one WriteContext inside the write
transaction and returns (ops, result). A plan given `as_user` (the onBehalfOf header) first
decides the operation as that user with the engine, on the same state: check and change in
one step.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sidecar.engine import AuthzRequest
from sidecar.errors import BadRequestError, ConflictError, NotFoundError, RefusedError
from sidecar.management import Planned, checked_permissions, permission_rows
from sidecar.policy import PolicySet
from sidecar.state import Op, RuntimeState
from sidecar.validation import canonical_id, clean_id, optional_list, reject_unknown, require_object

if TYPE_CHECKING:
    from sidecar.core import WriteContext

MAX_MEMBERS_PER_CALL = 25
SCOPE_LISTS = ("admins", "moderators", "participants")  # highest first
LIST_SCOPE = {"admins": "admin", "moderators": "moderator", "participants": "participant"}


def group_not_found(guid: str) -> NotFoundError:
    return NotFoundError(f"The group {guid} does not exist; create it with PUT /groups/{guid}.",
                         code="ERR_GUID_NOT_FOUND")


def require_group(state: RuntimeState, guid: str) -> None:
    if state.owner_of(guid) is None:
        raise group_not_found(guid)


# Refusals about the state rather than the actor's rights keep the status a plain write gets.
NOT_FOUND_CODES = {"ERR_GUID_NOT_FOUND"}
CONFLICT_CODES = {"ERR_ALREADY_BANNED", "ERR_NOT_A_BANNED_USER", "ERR_ALREADY_JOINED", "ERR_NOT_A_MEMBER",
                  "ERR_SAME_SCOPE", "ERR_GUID_ALREADY_EXISTS"}


def check_as(tx: WriteContext, as_user: str | None, action: str, guid: str | None,
             target: str | None = None, **context: Any) -> None:
    """Refuse unless as_user may do this, exactly as POST /authorize decides it (same code and
    reason; 404 for a missing group, 400 for a state conflict, else 403). Called before the plan's
    own checks, so that /authorize and the write agree on every refusal."""
    if as_user is None:
        return
    decision = tx.engine.decide(AuthzRequest(as_user, action, guid, target, context), tx.state)
    if decision.allowed:
        return
    code = decision.code or "ERR_PERMISSION_DENIED"
    if code in NOT_FOUND_CODES:
        raise NotFoundError(decision.reason, code=code)
    if code in CONFLICT_CODES:
        raise ConflictError(decision.reason, code=code)
    raise RefusedError(decision.reason, code=code)


def group_view(state: RuntimeState, guid: str) -> dict[str, Any]:
    require_group(state, guid)
    return {"guid": guid, "owner": state.owner_of(guid), "membersCount": len(state.members_of(guid)),
            "bannedCount": len(state.bans_of(guid)), "hasOverrides": guid in state.overrides}


def parse_group(body: Any) -> str:
    """PUT /groups/{guid}: the owner."""
    body = require_object(body)
    reject_unknown(body, {"owner"})
    return clean_id(body.get("owner"), "owner")


def plan_set_group(tx: WriteContext, guid: str, owner: str, as_user: str | None) -> Planned:
    state = tx.state
    current = state.owner_of(guid)
    if current is None:
        check_as(tx, as_user, "createGroup", guid)
        if as_user is not None and owner != as_user:  # its creator owns a group: nobody is made an owner unasked
            raise RefusedError(f"A group created on behalf of {as_user} is owned by {as_user}, not {owner}; "
                               "create it, then transfer ownership.", code="ERR_GROUP_NO_CLEARANCE")
    elif current != owner:  # a transfer: the owner's alone (the engine's transferOwnership rule)
        check_as(tx, as_user, "transferOwnership", guid, owner)
        if state.is_banned(guid, owner):  # never unbanned as a side effect
            raise ConflictError(f"{owner} is banned from group {guid}; unban them before making them the owner.",
                                code="ERR_BANNED_GROUPMEMBER")
    else:
        check_as(tx, as_user, "editGroup", guid)
        return [], None
    ops: list[Op] = [{"op": "put_group", "guid": guid, "owner": owner}]
    if state.scope_of(guid, owner) != "admin":
        ops.append({"op": "put_member", "guid": guid, "uid": owner, "scope": "admin"})
    return ops, None


def plan_delete_group(tx: WriteContext, guid: str, as_user: str | None) -> Planned:
    check_as(tx, as_user, "deleteGroup", guid)
    require_group(tx.state, guid)
    return [{"op": "delete_group", "guid": guid}], None


# -- members -------------------------------------------------------------------------------
def parse_member(body: Any) -> Any:
    """PUT /groups/{guid}/members/{uid}: the scope asked for (checked against the policy by the plan)."""
    body = require_object(body)
    reject_unknown(body, {"scope"})
    return body.get("scope")


def plan_set_member(tx: WriteContext, guid: str, uid: str, scope: Any, as_user: str | None) -> Planned:
    policy, state = tx.policy, tx.state
    if not isinstance(scope, str) or scope not in policy.scopes:
        raise BadRequestError.field("scope", f"The scope must be one of {', '.join(policy.scopes)}.")
    current = state.scope_of(guid, uid)
    if current is None:
        return _add_member_ops(tx, guid, uid, scope, as_user), None
    check_as(tx, as_user, "changeScope", guid, uid, newScope=scope)
    if current == scope:
        raise ConflictError(f"{uid} already has the scope {scope} in group {guid}.", code="ERR_SAME_SCOPE")
    if state.owner_of(guid) == uid and scope != "admin":
        raise RefusedError(f"{uid} owns group {guid} and stays admin; transfer ownership first.",
                           code="ERR_GROUP_NO_SCOPE_CLEARANCE")
    return [{"op": "put_member", "guid": guid, "uid": uid, "scope": scope}], None


def _add_member_ops(tx: WriteContext, guid: str, uid: str, scope: str, as_user: str | None) -> list[Op]:
    """Add uid as scope; on behalf of uid itself that is joining (joinGroup, as a participant)."""
    state = tx.state
    if as_user is not None and as_user == uid:
        check_as(tx, as_user, "joinGroup", guid)
        if scope != "participant":
            raise RefusedError(f"{uid} may join group {guid} as a participant only; an admin may then "
                               "change the scope.", code="ERR_GROUP_NO_CLEARANCE")
    else:
        check_as(tx, as_user, "addMembers", guid, uid, newScope=scope)
    require_group(state, guid)
    if state.is_banned(guid, uid):
        raise ConflictError(f"{uid} is banned from group {guid}; unban them first.",
                            code="ERR_BANNED_GROUPMEMBER")
    if state.scope_of(guid, uid) is not None:
        raise ConflictError(f"{uid} is already a member of group {guid}.", code="ERR_ALREADY_JOINED")
    return [{"op": "put_member", "guid": guid, "uid": uid, "scope": scope}]


def plan_add_members(tx: WriteContext, guid: str, wanted: dict[str, str], as_user: str | None) -> Planned:
    """POST /groups/{guid}/members: result = per-list, per-uid outcomes; one bad uid fails alone."""
    state = tx.state
    if as_user is None:  # on behalf of a user, each uid's op asks the engine first, as /authorize does
        require_group(state, guid)
    elif len(wanted) > 1:  # a bulk operation: the owner's or an admin's (CometChat's massMemberOperate)
        check_as(tx, as_user, "massMemberOperate", guid)
    ops: list[Op] = []
    results: dict[str, dict[str, Any]] = {list_name: {} for list_name in (*SCOPE_LISTS, "usersToBan")}
    for raw_uid, list_name in wanted.items():
        try:
            uid = clean_id(raw_uid, "uid")
            if list_name == "usersToBan":
                new_ops = _ban_ops(tx, guid, uid, as_user)
            else:
                new_ops = _add_member_ops(tx, guid, uid, LIST_SCOPE[list_name], as_user)
            ops += new_ops
            results[list_name][raw_uid] = {"success": True}
        except (BadRequestError, ConflictError, RefusedError) as exc:
            results[list_name][raw_uid] = {"success": False, "error": exc.to_dict()}
    return ops, {name: outcome for name, outcome in results.items() if outcome}


def parse_members(body: Any) -> dict[str, str]:
    """POST /groups/{guid}/members: uid -> the list it lands in: the highest scope wins;
    usersToBan stands apart."""
    body = require_object(body)
    reject_unknown(body, {*SCOPE_LISTS, "usersToBan"})
    wanted: dict[str, str] = {}
    total = 0
    for list_name in (*SCOPE_LISTS, "usersToBan"):
        uids = optional_list(body, list_name)
        if not all(isinstance(u, str) for u in uids):
            raise BadRequestError.field(list_name, f"The {list_name} must be a list of uids.")
        total += len(uids)
        for uid in uids:
            uid = canonical_id(uid) or uid  # "Bob" and "bob" are one user; an invalid id fails alone
            if list_name == "usersToBan" and wanted.get(uid, "usersToBan") != "usersToBan":
                raise BadRequestError.field("usersToBan", f"{uid} is listed both to add and to ban.")
            wanted.setdefault(uid, list_name)
    if total == 0:
        raise BadRequestError.field("participants", "List at least one uid to add or ban.")
    if total > MAX_MEMBERS_PER_CALL:
        raise BadRequestError.field("participants", f"At most {MAX_MEMBERS_PER_CALL} uids per call, "
                                    f"across all lists; got {total}.")
    return wanted


def plan_remove_member(tx: WriteContext, guid: str, uid: str, as_user: str | None) -> Planned:
    """Kick uid; on behalf of uid itself that is leaving (leaveGroup)."""
    state = tx.state
    if as_user is not None and as_user == uid:
        check_as(tx, as_user, "leaveGroup", guid)
    else:
        check_as(tx, as_user, "kickMembers", guid, uid)
    require_group(state, guid)
    if state.scope_of(guid, uid) is None:
        raise ConflictError(f"{uid} is not a member of group {guid}.", code="ERR_NOT_A_MEMBER")
    if state.owner_of(guid) == uid:
        raise RefusedError(f"{uid} owns group {guid}; transfer ownership before removing them.",
                           code="ERR_GROUP_NO_CLEARANCE")
    return [{"op": "delete_member", "guid": guid, "uid": uid}], None


def members_view(policy: PolicySet, state: RuntimeState, guid: str, scopes: str | None) -> list[dict[str, Any]]:
    require_group(state, guid)
    wanted = None
    if scopes:
        wanted = {s.strip() for s in scopes.split(",") if s.strip()}
        if not wanted or wanted - set(policy.scopes):
            raise BadRequestError.field("scopes", f"The scopes must be a comma-separated list of "
                                        f"{', '.join(policy.scopes)}.")
    members = state.members_of(guid)
    return [{"uid": uid, "scope": scope, "role": state.role_of(uid)}
            for uid, scope in sorted(members.items()) if wanted is None or scope in wanted]


# -- bans ----------------------------------------------------------------------------------
def _ban_ops(tx: WriteContext, guid: str, uid: str, as_user: str | None) -> list[Op]:
    state = tx.state
    check_as(tx, as_user, "ban", guid, uid)
    require_group(state, guid)
    if state.is_banned(guid, uid):
        raise ConflictError(f"{uid} is already banned from group {guid}.", code="ERR_ALREADY_BANNED")
    if state.owner_of(guid) == uid:
        raise RefusedError(f"{uid} owns group {guid} and cannot be banned.", code="ERR_GROUP_NO_CLEARANCE")
    return [{"op": "ban", "guid": guid, "uid": uid}]


def plan_ban(tx: WriteContext, guid: str, uid: str, as_user: str | None) -> Planned:
    return _ban_ops(tx, guid, uid, as_user), None


def plan_unban(tx: WriteContext, guid: str, uid: str, as_user: str | None) -> Planned:
    state = tx.state
    check_as(tx, as_user, "unban", guid, uid)
    require_group(state, guid)
    if not state.is_banned(guid, uid):
        raise ConflictError(f"{uid} is not banned from group {guid}.", code="ERR_NOT_A_BANNED_USER")
    return [{"op": "unban", "guid": guid, "uid": uid}], None


def bans_view(state: RuntimeState, guid: str) -> list[dict[str, Any]]:
    require_group(state, guid)
    return [{"uid": uid} for uid in sorted(state.bans_of(guid))]


# -- per-group scope permissions -----------------------------------------------------------
def require_scope(policy: PolicySet, scope: str) -> None:
    if scope not in policy.scopes:
        raise NotFoundError(f"The scope {scope} does not exist; scopes are {', '.join(policy.scopes)}.",
                            code="ERR_GROUP_SCOPE_NOT_FOUND")


def scope_permissions_view(policy: PolicySet, state: RuntimeState, guid: str, scope: str) -> list[dict[str, Any]]:
    require_group(state, guid)
    require_scope(policy, scope)
    return permission_rows(policy, state, "scope", scope, guid)


def plan_set_scope_permissions(tx: WriteContext, guid: str, scope: str, permissions: dict[str, Any]) -> Planned:
    require_group(tx.state, guid)
    require_scope(tx.policy, scope)
    values = checked_permissions(permissions, tx.policy.scope_keys, None)
    return [{"op": "set_scope_permissions", "guid": guid, "scope": scope, "values": values}], None


def plan_unset_scope_permission(tx: WriteContext, guid: str, scope: str, key: str) -> Planned:
    require_group(tx.state, guid)
    require_scope(tx.policy, scope)
    if key not in tx.state.overrides.get(guid, {}).get(scope, {}):
        raise NotFoundError(f"Group {guid} has no override of {key} for scope {scope}.",
                            code="ERR_PERMISSION_NOT_FOUND")
    return [{"op": "unset_scope_permission", "guid": guid, "scope": scope, "key": key}], None


def explicit_scope_permissions(state: RuntimeState, guid: str, scope: str) -> dict[str, Any]:
    return dict(state.overrides.get(guid, {}).get(scope, {}))
