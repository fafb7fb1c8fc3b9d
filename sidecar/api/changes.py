"""GET /changes?since=REVISION: the change log (who, what, before, after, revision), paged."""
from __future__ import annotations

from flask import Blueprint, request
from flask.wrappers import Response

from sidecar.api.common import paged, sidecar
from sidecar.validation import is_ascii_number, paging, revision

bp = Blueprint("changes", __name__)


@bp.get("/changes")
def list_changes() -> Response:
    raw = request.args.get("since", "0")
    since = revision(int(raw) if is_ascii_number(raw) else raw, "since") or 0
    per_page, current = paging(request.args)
    total, entries = sidecar().journal(since, (current - 1) * per_page, per_page)
    return paged(entries, total, per_page, current)
