"""Liveness and readiness, each with a JSON body that says why.

/health/ready is 503 when this sidecar cannot answer from current state (store unreachable or
its file replaced, sync down, past --max-staleness, Redis lost writes not yet written back); 200
"degraded" when it serves correctly but something needs an operator (the policy files on disk
are invalid: the last good policy serves; writes to the store's disk fail; Redis once lost
writes, until this sidecar restarts).
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify
from flask.wrappers import Response

from sidecar.api.common import sidecar
from sidecar.errors import ChatAuthzError
from sidecar.stores.base import SelfChecking
from sidecar.validation import format_token

bp = Blueprint("health", __name__)


@bp.get("/health/live")
def live() -> Response:
    return jsonify({"data": {"status": "live"}})


@bp.get("/health/ready")
def ready() -> tuple[Response, int]:
    core = sidecar()
    body: dict[str, Any] = {"policyHash": core.policy.content_hash}
    problems: list[str] = []
    store_warning: str | None = None
    if not core.loaded:
        problems.append("the state has not been loaded from the store yet")
    if core.synced:
        status = core.sync.status if core.sync else "NOT_READY"
        body["sync"] = {"status": status, "message": core.sync.message if core.sync else "no sync"}
        if status != "OK":
            problems.append(f"sync with Redis is {status}")
    else:
        try:
            core.refresh()
            store_warning = core.store.check() if isinstance(core.store, SelfChecking) else None
        except ChatAuthzError as exc:
            problems.append(exc.message)
    warnings: list[str] = []  # degraded but serving correctly: stay in the load balancer
    if store_warning:  # writes fail (say a full disk) but decisions are right: same for all workers
        warnings.append(store_warning)
    if core.policy_problems:
        # Every replica reads the same files: failing readiness here would take all of them out
        # while each still serves the last good policy.
        warnings.append(f"the policy files on disk are invalid ({len(core.policy_problems)} problem(s)); "
                        f"still serving {core.policy.content_hash}")
        body["policyProblems"] = core.policy_problems
    loss = core.data_loss
    if loss is not None:  # loud until restart: an operator must learn that Redis lost writes
        said = f"the store lost revisions {loss.first}..{loss.last} of epoch {loss.epoch}: {loss.detail}"
        if loss.status == "pending":
            problems.append(said)
        elif loss.restored_to is not None and loss.restored_to < loss.last:
            warnings.append(f"{said}; revisions {loss.restored_to + 1}..{loss.last} are lost for good")
        else:
            warnings.append(f"{said}; all written back")
        body["dataLoss"] = loss.to_dict()
    staleness = core.staleness_s()
    if core.max_staleness_s is not None and staleness > core.max_staleness_s:
        problems.append(f"state is {staleness:.1f}s stale, past --max-staleness")
    body.update(revision=core.state.revision, token=format_token(core.state.epoch, core.state.revision),
                stalenessSeconds=round(staleness, 3))
    body["status"] = "degraded" if problems or warnings else "ready"
    if problems or warnings:
        body["reasons"] = problems + warnings
    return jsonify({"data": body}), 503 if problems else 200
