"""Users' roles, groups (owner), members, bans and per-group scope permissions.

Member and group writes honour the onBehalfOf header: decided as that user first, atomically.
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request
from flask.wrappers import Response

from sidecar import groups as grp
from sidecar import management as m
from sidecar.api.common import json_body, page, sidecar, write, written
from sidecar.validation import clean_id

bp = Blueprint("groups", __name__)


def _as_user() -> str | None:
    raw = request.headers.get("onBehalfOf")
    return clean_id(raw, "onBehalfOf") if raw is not None else None


def _ids(guid: str, uid: str | None = None) -> tuple[str, str]:
    return clean_id(guid, "guid"), clean_id(uid, "uid") if uid is not None else ""


# -- users ---------------------------------------------------------------------------------
@bp.put("/users/<uid>")
def set_user(uid: str) -> Response:
    uid, body = clean_id(uid, "uid"), json_body()
    revision, view = write(lambda p, s: m.plan_set_user_role(p, s, uid, body), lambda p, s: m.user_view(s, uid))
    return written(view, revision)


@bp.get("/users/<uid>")
def get_user(uid: str) -> Response:
    uid = clean_id(uid, "uid")
    return jsonify({"data": sidecar().read(lambda p, s: m.user_view(s, uid))})


@bp.delete("/users/<uid>")
def delete_user(uid: str) -> Response:
    uid = clean_id(uid, "uid")
    revision, _ = write(lambda p, s: m.plan_delete_user(s, uid))
    return written({"success": True, "message": f"The user {uid} now has the default role."}, revision)


# -- groups --------------------------------------------------------------------------------
@bp.put("/groups/<guid>")
def set_group(guid: str) -> Response:
    guid, body, as_user = clean_id(guid, "guid"), json_body(), _as_user()
    engine = sidecar().engine
    revision, view = write(lambda p, s: grp.plan_set_group(engine, s, guid, body, as_user),
                           lambda p, s: grp.group_view(s, guid))
    return written(view, revision)


@bp.get("/groups/<guid>")
def get_group(guid: str) -> Response:
    guid = clean_id(guid, "guid")
    return jsonify({"data": sidecar().read(lambda p, s: grp.group_view(s, guid))})


@bp.delete("/groups/<guid>")
def delete_group(guid: str) -> Response:
    guid, as_user, engine = clean_id(guid, "guid"), _as_user(), sidecar().engine
    revision, _ = write(lambda p, s: grp.plan_delete_group(engine, s, guid, as_user))
    return written({"success": True, "message": f"The group {guid} has been deleted."}, revision)


# -- members -------------------------------------------------------------------------------
@bp.post("/groups/<guid>/members")
def add_members(guid: str) -> Response:
    guid, body, as_user, engine = clean_id(guid, "guid"), json_body(), _as_user(), sidecar().engine
    results: dict[str, dict[str, Any]] = {}

    def plan(policy, state):  # type: ignore[no-untyped-def]
        results.clear()
        return grp.plan_add_members(engine, state, guid, body, as_user, results)
    revision, _ = write(plan)
    return written({k: v for k, v in results.items() if v}, revision)


@bp.get("/groups/<guid>/members")
def list_members(guid: str) -> Response:
    guid, scopes = clean_id(guid, "guid"), request.args.get("scopes")
    return page(sidecar().read(lambda p, s: grp.members_view(p, s, guid, scopes)))


@bp.put("/groups/<guid>/members/<uid>")
def set_member(guid: str, uid: str) -> Response:
    (guid, uid), body, as_user, engine = _ids(guid, uid), json_body(), _as_user(), sidecar().engine
    revision, scope = write(lambda p, s: grp.plan_set_member(engine, p, s, guid, uid, body, as_user),
                            lambda p, s: s.scope_of(guid, uid))
    return written({"guid": guid, "uid": uid, "scope": scope}, revision)


@bp.delete("/groups/<guid>/members/<uid>")
def remove_member(guid: str, uid: str) -> Response:
    (guid, uid), as_user, engine = _ids(guid, uid), _as_user(), sidecar().engine
    revision, _ = write(lambda p, s: grp.plan_remove_member(engine, s, guid, uid, as_user))
    return written({"success": True, "message": f"The member with {uid} has been kicked from "
                    f"the Group with {guid}."}, revision)


# -- bans ----------------------------------------------------------------------------------
@bp.post("/groups/<guid>/bannedusers/<uid>")
def ban(guid: str, uid: str) -> Response:
    (guid, uid), as_user, engine = _ids(guid, uid), _as_user(), sidecar().engine
    revision, _ = write(lambda p, s: grp.plan_ban(engine, s, guid, uid, as_user))
    return written({"success": True, "message": f"The user {uid} has been banned from the "
                    f"Group with {guid}."}, revision)


@bp.delete("/groups/<guid>/bannedusers/<uid>")
def unban(guid: str, uid: str) -> Response:
    (guid, uid), as_user, engine = _ids(guid, uid), _as_user(), sidecar().engine
    revision, _ = write(lambda p, s: grp.plan_unban(engine, s, guid, uid, as_user))
    return written({"success": True, "message": f"The user {uid} has been unbanned from the "
                    f"Group with {guid}."}, revision)


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
    guid, body = clean_id(guid, "guid"), json_body()
    revision, explicit = write(lambda p, s: grp.plan_set_scope_permissions(p, s, guid, scope, body),
                               lambda p, s: grp.explicit_scope_permissions(s, guid, scope))
    data: dict[str, Any] = {k: {"success": True, "message": f"Permission with id {k} have been mapped "
                                f"successfully to scope {scope} on group {guid}."} for k in body["permissions"]}
    data["permissions"] = explicit
    return written(data, revision)


@bp.delete("/groups/<guid>/scopes/<scope>/permissions/<permission>")
def unset_scope_permission(guid: str, scope: str, permission: str) -> Response:
    guid = clean_id(guid, "guid")
    revision, remaining = write(lambda p, s: grp.plan_unset_scope_permission(p, s, guid, scope, permission),
                                lambda p, s: grp.explicit_scope_permissions(s, guid, scope))
    return written({"message": "Scope permission unset successfully", "permissions": remaining}, revision)
