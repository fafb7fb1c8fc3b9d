"""GET /metrics (Prometheus); per-request latency, request id and a log line for every Flask route."""
from __future__ import annotations

import logging
import time

from flask import Blueprint, Flask, Response, g, request

from sidecar import metrics
from sidecar.api.common import sidecar
from sidecar.logs import take_request_id

log = logging.getLogger("chatauthz.api")

bp = Blueprint("ops", __name__)


@bp.get("/metrics")
def prometheus() -> Response:
    gauges = sidecar().gauges
    if gauges is not None:
        gauges.update()  # this worker's gauges are exact at scrape time
    body, content_type = metrics.render()
    return Response(body, content_type=content_type)


def install_request_timing(app: Flask) -> None:
    @app.before_request
    def start_timer() -> None:
        g.started = time.perf_counter()
        g.request_id = take_request_id(request.headers.get("X-Request-Id"))

    @app.after_request
    def record(response: Response) -> Response:
        started = g.get("started")
        route = request.url_rule.rule if request.url_rule else "unmatched"
        if started is not None:  # labels from closed sets only: a client must not mint series
            method = request.method if request.method in metrics.METHODS else "other"
            metrics.observe_request(route, method, response.status_code, time.perf_counter() - started)
        if g.get("request_id"):
            response.headers["X-Request-Id"] = g.request_id
        if request.method != "GET" and route != "unmatched":
            log.info("%s %s -> %s", request.method, request.path, response.status_code,
                     extra={"actor": g.get("actor"), "route": route, "status": response.status_code})
        return response
