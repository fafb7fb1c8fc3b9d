"""Roles in CometChat's paths and shapes: /roles and /roles/{role}/permissions.

Each write view parses its body and ids first, then commits one plan (sidecar.management).
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify
from flask.wrappers import Response

from sidecar import management as m
from sidecar.api.common import json_body, page, sidecar, write, written
from sidecar.core import WriteContext
from sidecar.validation import clean_id

bp = Blueprint("roles", __name__)


def _role_id(role: str) -> str:
    return clean_id(role, "role")


def _role_view(role: str) -> Any:
    """After a write: the role object at the write's revision."""
    return lambda tx, _: m.role_view(tx.policy, tx.state, role)


def _explicit(role: str) -> Any:
    return lambda tx, _: m.explicit_role_permissions(tx.state, role)


@bp.post("/roles")
def create_role() -> Response:
    record = m.parse_new_role(json_body())
    max_roles = current_app.extensions["chatauthz.settings"].max_roles
    done = write(lambda tx: m.plan_create_role(tx, record, max_roles), _created_view)
    return written(done.shown, done)


def _created_view(tx: WriteContext, role: str) -> dict[str, Any]:
    return m.role_view(tx.policy, tx.state, role)


@bp.get("/roles")
def list_roles() -> Response:
    return page(sidecar().read(lambda p, s: [m.role_view(p, s, r) for r in m.all_role_ids(p, s)]))


@bp.get("/roles/<role>")
def get_role(role: str) -> Response:
    role = _role_id(role)
    return jsonify({"data": sidecar().read(lambda p, s: m.role_view(p, s, role))})


@bp.put("/roles/<role>")
def update_role(role: str) -> Response:
    role, update = _role_id(role), m.parse_role_update(json_body())
    done = write(lambda tx: m.plan_update_role(tx, role, update), _role_view(role))
    return written(done.shown, done)


@bp.delete("/roles/<role>")
def delete_role(role: str) -> Response:
    role = _role_id(role)
    done = write(lambda tx: m.plan_delete_role(tx, role))
    return written({"success": True, "message": f"Role {role} has been deleted successfully.",
                    "usersMovedToDefault": done.result}, done)


@bp.get("/roles/<role>/permissions")
def list_role_permissions(role: str) -> Response:
    role = _role_id(role)
    return page(sidecar().read(lambda p, s: m.role_permissions_view(p, s, role)))


@bp.put("/roles/<role>/permissions")
def set_role_permissions(role: str) -> Response:
    role, permissions = _role_id(role), m.parse_permissions(json_body())
    done = write(lambda tx: m.plan_set_role_permissions(tx, role, permissions), _explicit(role))
    data: dict[str, Any] = {k: {"success": True, "message": f"Permission with id {k} have been mapped successfully "
                      f"to role {role}."} for k in permissions}
    data["permissions"] = done.shown
    return written(data, done)


@bp.delete("/roles/<role>/permissions/<permission>")
def unset_role_permission(role: str, permission: str) -> Response:
    role = _role_id(role)
    done = write(lambda tx: m.plan_unset_role_permission(tx, role, permission), _explicit(role))
    return written({"message": "Role permission unset successfully", "permissions": done.shown}, done)


@bp.post("/roles/<role>/restrictedfeatures")
def restrict_features(role: str) -> Response:
    role, change = _role_id(role), m.parse_restrict_features(json_body())
    done = write(lambda tx: m.plan_restrict_features(tx, role, change))
    data = {key: {"success": True, "message": f"The feature {key} has been restricted successfully."}
            for key in change.keys}
    return written(data, done)


@bp.get("/roles/<role>/restrictedfeatures")
def list_restricted_features(role: str) -> Response:
    role = _role_id(role)
    return page(sidecar().read(lambda p, s: m.restricted_features_view(p, s, role)))


@bp.delete("/roles/<role>/restrictedfeatures")
def allow_features(role: str) -> Response:
    role, change = _role_id(role), m.parse_allow_features(json_body())
    done = write(lambda tx: m.plan_allow_features(tx, role, change))
    return written({"success": True, "message": "The feature has been allowed successfully."}, done)
