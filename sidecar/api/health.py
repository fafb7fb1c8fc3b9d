"""Liveness and readiness, each with a JSON body that says why."""
from __future__ import annotations

from flask import Blueprint, jsonify
from flask.wrappers import Response

from sidecar.api.common import sidecar
from sidecar.errors import ChatAuthzError

bp = Blueprint("health", __name__)


@bp.get("/health/live")
def live() -> Response:
    return jsonify({"data": {"status": "live"}})


@bp.get("/health/ready")
def ready() -> tuple[Response, int]:
    core = sidecar()
    try:
        core.refresh()
    except ChatAuthzError as exc:
        return jsonify({"data": {"status": "degraded", "reason": exc.message}}), 503
    return jsonify({"data": {"status": "ready", "policyHash": core.policy.content_hash,
                             "revision": core.state.revision}}), 200
