"""Roles in CometChat's paths and shapes: /roles and /roles/{role}/permissions."""
from __future__ import annotations

from functools import partial
from typing import Any

from flask import Blueprint, current_app, jsonify
from flask.wrappers import Response

from sidecar import management as m
from sidecar.api.common import json_body, page, sidecar, write, written
from sidecar.validation import clean_id

bp = Blueprint("roles", __name__)


def _role_id(role: str) -> str:
    return clean_id(role, "role")


@bp.post("/roles")
def create_role() -> Response:
    body = json_body()
    max_roles = current_app.extensions["chatauthz.settings"].max_roles
    created: list[str] = []  # the validated (lowercased) id, known once the plan has run

    def plan(policy, state):  # type: ignore[no-untyped-def]
        ops = m.plan_create_role(policy, state, body, max_roles)
        created.append(ops[0]["role"])
        return ops
    revision, view = write(plan, lambda policy, state: m.role_view(policy, state, created[-1]))
    return written(view, revision)


@bp.get("/roles")
def list_roles() -> Response:
    return page(sidecar().read(lambda p, s: [m.role_view(p, s, r) for r in m.all_role_ids(p, s)]))


@bp.get("/roles/<role>")
def get_role(role: str) -> Response:
    role = _role_id(role)
    return jsonify({"data": sidecar().read(partial(_view, role))})


@bp.put("/roles/<role>")
def update_role(role: str) -> Response:
    role, body = _role_id(role), json_body()
    revision, view = write(lambda p, s: m.plan_update_role(p, s, role, body), partial(_view, role))
    return written(view, revision)


@bp.delete("/roles/<role>")
def delete_role(role: str) -> Response:
    role = _role_id(role)
    holders: list[int] = []

    def plan(policy, state):  # type: ignore[no-untyped-def]
        ops = m.plan_delete_role(policy, state, role)
        holders.append(sum(1 for held in state.users.values() if held == role))
        return ops
    revision, _ = write(plan)
    return written({"success": True, "message": f"Role {role} has been deleted successfully.",
                    "usersMovedToDefault": holders[-1]}, revision)


@bp.get("/roles/<role>/permissions")
def list_role_permissions(role: str) -> Response:
    role = _role_id(role)
    return page(sidecar().read(lambda p, s: m.role_permissions_view(p, s, role)))


@bp.put("/roles/<role>/permissions")
def set_role_permissions(role: str) -> Response:
    role, body = _role_id(role), json_body()
    revision, explicit = write(lambda p, s: m.plan_set_role_permissions(p, s, role, body),
                               lambda p, s: m.explicit_role_permissions(s, role))
    data: dict[str, Any] = {k: {"success": True, "message": f"Permission with id {k} have been mapped successfully "
                      f"to role {role}."} for k in body["permissions"]}
    data["permissions"] = explicit
    return written(data, revision)


@bp.delete("/roles/<role>/permissions/<permission>")
def unset_role_permission(role: str, permission: str) -> Response:
    role = _role_id(role)
    revision, remaining = write(lambda p, s: m.plan_unset_role_permission(p, s, role, permission),
                                lambda p, s: m.explicit_role_permissions(s, role))
    return written({"message": "Role permission unset successfully", "permissions": remaining}, revision)


def _view(role: str, policy, state):  # type: ignore[no-untyped-def]
    return m.role_view(policy, state, role)


@bp.post("/roles/<role>/restrictedfeatures")
def restrict_features(role: str) -> Response:
    role, body = _role_id(role), json_body()
    revision, _ = write(lambda p, s: m.plan_restrict_features(p, s, role, body))
    data = {key: {"success": True, "message": f"The feature {key} has been restricted successfully."}
            for key in body["featuresToRestrict"]}
    return written(data, revision)


@bp.get("/roles/<role>/restrictedfeatures")
def list_restricted_features(role: str) -> Response:
    role = _role_id(role)
    return page(sidecar().read(lambda p, s: m.restricted_features_view(p, s, role)))


@bp.delete("/roles/<role>/restrictedfeatures")
def allow_features(role: str) -> Response:
    role, body = _role_id(role), json_body()
    revision, _ = write(lambda p, s: m.plan_allow_features(p, s, role, body))
    return written({"success": True, "message": "The feature has been allowed successfully."}, revision)
