"""GET /metrics (Prometheus) and per-request latency for every Flask route."""
from __future__ import annotations

import time

from flask import Blueprint, Flask, Response, current_app, g, request

from sidecar import metrics

bp = Blueprint("ops", __name__)


@bp.get("/metrics")
def prometheus() -> Response:
    gauges = current_app.extensions["chatauthz"].gauges
    if gauges is not None:
        gauges.update()  # this worker's gauges are exact at scrape time
    body, content_type = metrics.render()
    return Response(body, content_type=content_type)


def install_request_timing(app: Flask) -> None:
    @app.before_request
    def start_timer() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def record(response: Response) -> Response:
        started = g.get("started")
        if started is not None:
            route = request.url_rule.rule if request.url_rule else "unmatched"
            metrics.observe_request(route, request.method, response.status_code, time.perf_counter() - started)
        return response
