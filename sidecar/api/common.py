"""Helpers shared by the route modules: the Sidecar, the JSON body, list paging, writes."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import current_app, g, jsonify, request
from flask.wrappers import Response

from sidecar import wire
from sidecar.core import Sidecar, WriteContext, Written
from sidecar.management import Planned
from sidecar.validation import paging


def sidecar() -> Sidecar:
    return current_app.extensions["chatauthz"]  # type: ignore[no-any-return]


def json_body(optional: bool = False) -> Any:
    """The request's JSON body, read by sidecar.wire as on /authorize (a 400 or 413 otherwise)."""
    limit = current_app.extensions["chatauthz.settings"].max_body_bytes
    return wire.read_json(request.content_type, request.content_length, lambda _: request.get_data(cache=False),
                          limit=limit, optional=optional)


def write(plan: Callable[[WriteContext], Planned], after: Callable[[WriteContext, Any], Any] | None = None
          ) -> Written[Any]:
    """Commit the plan as the calling key (Sidecar.write: check and change in one step)."""
    return sidecar().write(plan, actor(), after)


def actor() -> str:
    """The name of the calling key (api/auth.py)."""
    return g.get("actor", "unknown")  # type: ignore[no-any-return]


def answer(data: Any, done: Written[Any]) -> dict[str, Any]:
    """A write's answer: data, the revision after it and its consistency token."""
    return {"data": data, "revision": done.revision, "token": done.token}


def written(data: Any, done: Written[Any]) -> Response:
    """answer() as a Flask response."""
    return jsonify(answer(data, done))


def page(items: list[Any]) -> Response:
    per_page, current = paging(request.args)
    total = len(items)
    chunk = items[(current - 1) * per_page: current * per_page]
    return paged(chunk, total, per_page, current)


def paged(chunk: list[Any], total: int, per_page: int, current: int) -> Response:
    """CometChat's list shape: data plus meta.pagination."""
    return jsonify({"data": chunk, "meta": {"pagination": {
        "total": total, "count": len(chunk), "per_page": per_page, "current_page": current,
        "total_pages": max(1, -(-total // per_page))}}})
