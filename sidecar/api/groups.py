"""Users' roles, groups' owners and members' scopes: enough to drive the scope layer."""
from __future__ import annotations

from flask import Blueprint, jsonify
from flask.wrappers import Response

from sidecar import management as m
from sidecar.api.common import json_body, sidecar, write
from sidecar.validation import clean_id

bp = Blueprint("groups", __name__)


@bp.put("/users/<uid>")
def set_user(uid: str) -> Response:
    uid, body = clean_id(uid, "uid"), json_body()
    revision = write(lambda p, s: m.plan_set_user_role(p, s, uid, body))
    return jsonify({"data": sidecar().read(lambda p, s: m.user_view(s, uid)), "revision": revision})


@bp.get("/users/<uid>")
def get_user(uid: str) -> Response:
    uid = clean_id(uid, "uid")
    return jsonify({"data": sidecar().read(lambda p, s: m.user_view(s, uid))})


@bp.put("/groups/<guid>")
def set_group(guid: str) -> Response:
    guid, body = clean_id(guid, "guid"), json_body()
    revision = write(lambda p, s: m.plan_set_group(p, s, guid, body))
    return jsonify({"data": sidecar().read(lambda p, s: m.group_view(s, guid)), "revision": revision})


@bp.get("/groups/<guid>")
def get_group(guid: str) -> Response:
    guid = clean_id(guid, "guid")
    return jsonify({"data": sidecar().read(lambda p, s: m.group_view(s, guid))})


@bp.delete("/groups/<guid>")
def delete_group(guid: str) -> Response:
    guid = clean_id(guid, "guid")
    revision = write(lambda p, s: m.plan_delete_group(s, guid))
    return jsonify({"data": {"success": True, "message": f"The group {guid} has been deleted."},
                    "revision": revision})


@bp.put("/groups/<guid>/members/<uid>")
def set_member(guid: str, uid: str) -> Response:
    guid, uid, body = clean_id(guid, "guid"), clean_id(uid, "uid"), json_body()
    revision = write(lambda p, s: m.plan_set_member(p, s, guid, uid, body))
    scope = sidecar().read(lambda p, s: s.scope_of(guid, uid))
    return jsonify({"data": {"guid": guid, "uid": uid, "scope": scope}, "revision": revision})


@bp.delete("/groups/<guid>/members/<uid>")
def remove_member(guid: str, uid: str) -> Response:
    guid, uid = clean_id(guid, "guid"), clean_id(uid, "uid")
    revision = write(lambda p, s: m.plan_remove_member(s, guid, uid))
    return jsonify({"data": {"success": True, "message": f"The member with {uid} has been kicked from "
                             f"the Group with {guid}."}, "revision": revision})
