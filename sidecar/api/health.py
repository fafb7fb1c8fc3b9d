"""Liveness and readiness, each with a JSON body that says why (Sidecar.readiness decides:
503 when this sidecar cannot answer from current state, 200 "degraded" when it answers
correctly but something needs an operator)."""
from __future__ import annotations

from flask import Blueprint, jsonify
from flask.wrappers import Response

from sidecar.api.common import sidecar

bp = Blueprint("health", __name__)


@bp.get("/health/live")
def live() -> Response:
    return jsonify({"data": {"status": "live"}})


@bp.get("/health/ready")
def ready() -> tuple[Response, int]:
    readiness = sidecar().readiness()
    return jsonify({"data": readiness.to_dict()}), 200 if readiness.serving else 503
