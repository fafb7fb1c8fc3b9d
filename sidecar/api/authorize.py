"""POST /authorize and POST /authorize/batch: a denial is a 200 with allowed=false."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify
from flask.wrappers import Response

from sidecar.api.common import json_body, sidecar
from sidecar.core import Sidecar
from sidecar.engine import AuthzRequest
from sidecar.errors import BadRequestError, ChatAuthzError
from sidecar.validation import Token, clean_id, consistency, context, reject_unknown, require_object

bp = Blueprint("authorize", __name__)
FIELDS = {"uid", "action", "guid", "target", "context", "atLeastRevision"}


def parse_check(body: Any) -> tuple[AuthzRequest, int | Token | None]:
    body = require_object(body)
    reject_unknown(body, FIELDS)
    action = body.get("action")
    if not isinstance(action, str) or not action or len(action) > 100:
        raise BadRequestError.field("action", "The action field is required and must be a string.")
    guid = clean_id(body["guid"], "guid") if body.get("guid") is not None else None
    target = clean_id(body["target"], "target") if body.get("target") is not None else None
    request = AuthzRequest(clean_id(body.get("uid"), "uid"), action, guid, target, context(body.get("context")))
    return request, consistency(body.get("atLeastRevision"))


def authorize_one(core: Sidecar, body: Any) -> dict[str, Any]:
    request, at_least = parse_check(body)
    return {"data": core.decide(request, at_least)}


def authorize_many(core: Sidecar, body: Any, limit: int) -> dict[str, Any]:
    body = require_object(body)
    reject_unknown(body, {"checks"})
    checks = body.get("checks")
    if not isinstance(checks, list) or not 1 <= len(checks) <= limit:
        raise BadRequestError.field("checks", f"The checks field must be a list of 1 to {limit} checks.")
    parsed: list[tuple[AuthzRequest, int | Token | None] | ChatAuthzError] = []
    for check in checks:
        try:
            parsed.append(parse_check(check))
        except ChatAuthzError as exc:
            parsed.append(exc)
    if not core.synced:
        try:
            core.refresh()  # once for the whole batch
        except ChatAuthzError:
            pass  # decide from the last state, as a single check would
    wanted = [item[1] for item in parsed if isinstance(item, tuple) and item[1] is not None]
    if wanted:
        core.wait_for_revision(wanted)  # one bounded wait for the whole batch
    results: list[dict[str, Any]] = []
    for item in parsed:
        try:
            if isinstance(item, ChatAuthzError):
                raise item
            results.append(core.decide(item[0], item[1], wait=False, refresh=False))
        except ChatAuthzError as exc:
            results.append({"error": exc.to_dict()})
    return {"data": {"results": results}}


@bp.post("/authorize")
def authorize() -> Response:
    return jsonify(authorize_one(sidecar(), json_body()))


@bp.post("/authorize/batch")
def authorize_batch() -> Response:
    limit = current_app.extensions["chatauthz.settings"].max_batch
    return jsonify(authorize_many(sidecar(), json_body(), limit))
