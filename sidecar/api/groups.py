"""Users' roles, groups (owner), members, bans and per-group scope permissions.

Each write view parses its body and ids first, then commits one plan (sidecar.groups,
sidecar.management). Member and group writes honour the onBehalfOf header: decided as that
user first, in the same transaction. The two writes a chat service makes most (a user's role, a
member's scope) are answered by user_answer and member_answer, which api/fastpath.py also calls
in front of Flask.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint, jsonify, request
from flask.wrappers import Response

from sidecar import groups as grp
from sidecar import management as m
from sidecar.api.common import actor, answer, json_body, page, sidecar, write, written
from sidecar.core import Sidecar
from sidecar.validation import clean_id

bp = Blueprint("groups", __name__)


def _as_user() -> str | None:
    return _on_behalf_of(request.headers.get("onBehalfOf"))


def _on_behalf_of(raw: str | None) -> str | None:
    return clean_id(raw, "onBehalfOf") if raw is not None else None


def _ids(guid: str, uid: str | None = None) -> tuple[str, str]:
    return clean_id(guid, "guid"), clean_id(uid, "uid") if uid is not None else ""


def _done(plan: Any, message: str) -> Response:
    """A write whose answer is a success message."""
    return written({"success": True, "message": message}, write(plan))


# -- users ---------------------------------------------------------------------------------
@bp.put("/users/<uid>")
def set_user(uid: str) -> Response:
    return jsonify(user_answer(sidecar(), actor(), uid, json_body))


def user_answer(core: Sidecar, by: str, uid: str, body: Callable[[], Any]) -> dict[str, Any]:
    """PUT /users/<uid> as the key `by`: the id, then the body (read by body()), then the write."""
    uid, role = clean_id(uid, "uid"), m.parse_user_role(body())
    done = core.write(lambda tx: m.plan_set_user_role(tx, uid, role), by, lambda tx, _: m.user_view(tx.state, uid))
    return answer(done.shown, done)


@bp.get("/users/<uid>")
def get_user(uid: str) -> Response:
    uid = clean_id(uid, "uid")
    return jsonify({"data": sidecar().read(lambda p, s: m.user_view(s, uid))})


@bp.delete("/users/<uid>")
def delete_user(uid: str) -> Response:
    uid = clean_id(uid, "uid")
    return _done(lambda tx: m.plan_delete_user(tx, uid), f"The user {uid} now has the default role.")


# -- groups --------------------------------------------------------------------------------
@bp.put("/groups/<guid>")
def set_group(guid: str) -> Response:
    guid, owner, as_user = clean_id(guid, "guid"), grp.parse_group(json_body()), _as_user()
    done = write(lambda tx: grp.plan_set_group(tx, guid, owner, as_user), lambda tx, _: grp.group_view(tx.state, guid))
    return written(done.shown, done)


@bp.get("/groups/<guid>")
def get_group(guid: str) -> Response:
    guid = clean_id(guid, "guid")
    return jsonify({"data": sidecar().read(lambda p, s: grp.group_view(s, guid))})


@bp.delete("/groups/<guid>")
def delete_group(guid: str) -> Response:
    guid, as_user = clean_id(guid, "guid"), _as_user()
    return _done(lambda tx: grp.plan_delete_group(tx, guid, as_user), f"The group {guid} has been deleted.")


# -- members -------------------------------------------------------------------------------
@bp.post("/groups/<guid>/members")
def add_members(guid: str) -> Response:
    guid, wanted, as_user = clean_id(guid, "guid"), grp.parse_members(json_body()), _as_user()
    done = write(lambda tx: grp.plan_add_members(tx, guid, wanted, as_user))
    return written(done.result, done)


@bp.get("/groups/<guid>/members")
def list_members(guid: str) -> Response:
    guid, scopes = clean_id(guid, "guid"), request.args.get("scopes")
    return page(sidecar().read(lambda p, s: grp.members_view(p, s, guid, scopes)))


@bp.put("/groups/<guid>/members/<uid>")
def set_member(guid: str, uid: str) -> Response:
    return jsonify(member_answer(sidecar(), actor(), guid, uid, json_body, request.headers.get("onBehalfOf")))


def member_answer(core: Sidecar, by: str, guid: str, uid: str, body: Callable[[], Any],
                  on_behalf_of: str | None) -> dict[str, Any]:
    """PUT /groups/<guid>/members/<uid> as the key `by` (decided as on_behalf_of, the header, if given)."""
    (guid, uid), scope = _ids(guid, uid), grp.parse_member(body())
    as_user = _on_behalf_of(on_behalf_of)
    done = core.write(lambda tx: grp.plan_set_member(tx, guid, uid, scope, as_user), by,
                      lambda tx, _: tx.state.scope_of(guid, uid))
    return answer({"guid": guid, "uid": uid, "scope": done.shown}, done)


@bp.delete("/groups/<guid>/members/<uid>")
def remove_member(guid: str, uid: str) -> Response:
    (guid, uid), as_user = _ids(guid, uid), _as_user()
    return _done(lambda tx: grp.plan_remove_member(tx, guid, uid, as_user),
                 f"The member with {uid} has been kicked from the Group with {guid}.")


# -- bans ----------------------------------------------------------------------------------
@bp.post("/groups/<guid>/bannedusers/<uid>")
def ban(guid: str, uid: str) -> Response:
    (guid, uid), as_user = _ids(guid, uid), _as_user()
    return _done(lambda tx: grp.plan_ban(tx, guid, uid, as_user),
                 f"The user {uid} has been banned from the Group with {guid}.")


@bp.delete("/groups/<guid>/bannedusers/<uid>")
def unban(guid: str, uid: str) -> Response:
    (guid, uid), as_user = _ids(guid, uid), _as_user()
    return _done(lambda tx: grp.plan_unban(tx, guid, uid, as_user),
                 f"The user {uid} has been unbanned from the Group with {guid}.")


@bp.get("/groups/<guid>/bannedusers")
def list_bans(guid: str) -> Response:
    guid = clean_id(guid, "guid")
    return page(sidecar().read(lambda p, s: grp.bans_view(s, guid)))


# -- per-group scope permissions -----------------------------------------------------------
@bp.get("/groups/<guid>/scopes/<scope>/permissions")
def list_scope_permissions(guid: str, scope: str) -> Response:
    guid = clean_id(guid, "guid")
    return page(sidecar().read(lambda p, s: grp.scope_permissions_view(p, s, guid, scope)))


@bp.put("/groups/<guid>/scopes/<scope>/permissions")
def set_scope_permissions(guid: str, scope: str) -> Response:
    guid, permissions = clean_id(guid, "guid"), m.parse_permissions(json_body())
    done = write(lambda tx: grp.plan_set_scope_permissions(tx, guid, scope, permissions),
                 lambda tx, _: grp.explicit_scope_permissions(tx.state, guid, scope))
    data: dict[str, Any] = {k: {"success": True, "message": f"Permission with id {k} have been mapped "
                                f"successfully to scope {scope} on group {guid}."} for k in permissions}
    data["permissions"] = done.shown
    return written(data, done)


@bp.delete("/groups/<guid>/scopes/<scope>/permissions/<permission>")
def unset_scope_permission(guid: str, scope: str, permission: str) -> Response:
    guid = clean_id(guid, "guid")
    done = write(lambda tx: grp.plan_unset_scope_permission(tx, guid, scope, permission),
                 lambda tx, _: grp.explicit_scope_permissions(tx.state, guid, scope))
    return written({"message": "Scope permission unset successfully", "permissions": done.shown}, done)
