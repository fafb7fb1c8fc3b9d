"""Prometheus metrics. With several worker processes, PROMETHEUS_MULTIPROC_DIR (set by
sidecar.serving before the workers start) makes /metrics aggregate every worker's values.

Recording is cheap on the hot path: label children are cached, and gauges (revision,
staleness, policy) are refreshed by a background thread, not per request.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

FAST_BUCKETS = (5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2, 0.1, 1.0)

DECISIONS = Counter("chatauthz_decisions_total", "Decisions by result, layer and code",
                    ["result", "layer", "code"])
DECISION_SECONDS = Histogram("chatauthz_decision_seconds", "Time to decide one check (in process)",
                             buckets=FAST_BUCKETS)
REQUEST_SECONDS = Histogram("chatauthz_request_seconds", "HTTP request latency by route and status",
                            ["route", "method", "status"], buckets=FAST_BUCKETS)
POLICY_INFO = Gauge("chatauthz_policy_info", "The policy content hash being served (value 1)",
                    ["hash"], multiprocess_mode="liveall")
REVISION = Gauge("chatauthz_revision", "Runtime-state revision applied", multiprocess_mode="min")
STALENESS = Gauge("chatauthz_staleness_seconds", "Seconds since the store was last heard from",
                  multiprocess_mode="max")
POLICY_INVALID = Gauge("chatauthz_policy_invalid", "1 while the policy files on disk are refused",
                       multiprocess_mode="max")
RELOAD_FAILURES = Counter("chatauthz_policy_reload_failures_total", "Policy changes refused as invalid")
STORE_ERRORS = Counter("chatauthz_store_errors_total", "Store reads or writes that failed")
DATA_LOSS_EVENTS = Counter("chatauthz_data_loss_events_total",
                           "Times the store was found without writes this sidecar had applied")
DATA_LOSS_INFO = Gauge("chatauthz_data_loss_info", "The last data loss (value 1): the epoch, the revisions "
                       "lost, and up to which revision they were written back", ["epoch", "first", "last",
                       "status", "restored_to"], multiprocess_mode="liveall")
DECISION_LOG_DROPPED = Counter("chatauthz_decision_log_dropped_total", "Decision log entries dropped")

_decision_children: dict[tuple[str, str, str], Any] = {}
_request_children: dict[tuple[str, str, int], Any] = {}


def observe_decision(body: dict[str, Any], seconds: float) -> None:
    key = ("allowed" if body["allowed"] else "denied", body.get("layer") or "", body.get("code") or "")
    child = _decision_children.get(key)
    if child is None:
        child = _decision_children[key] = DECISIONS.labels(*key)
    child.inc()
    DECISION_SECONDS.observe(seconds)


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    key = (route, method, status)
    child = _request_children.get(key)
    if child is None:
        child = _request_children[key] = REQUEST_SECONDS.labels(route, method, str(status))
    child.observe(seconds)


def render() -> tuple[bytes, str]:
    """The exposition text, aggregated across worker processes when they share a directory."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


class GaugeUpdater:
    """Refreshes this process's gauges from the sidecar every interval (and before a scrape)."""

    def __init__(self, core: Any, interval_s: float = 1.0) -> None:
        self.core = core
        self.interval_s = interval_s
        self._hash: str | None = None
        self._loss: tuple[str, ...] | None = None
        self._seen: dict[Any, int] = {}  # counter -> the core's count already added
        self._thread = threading.Thread(target=self._run, name="chatauthz-metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def update(self) -> None:
        core = self.core
        digest = core.policy.content_hash
        if digest != self._hash:
            if self._hash is not None:
                POLICY_INFO.remove(self._hash)
            POLICY_INFO.labels(digest).set(1)
            self._hash = digest
        REVISION.set(core.state.revision)
        STALENESS.set(core.staleness_s())
        POLICY_INVALID.set(1 if core.policy_problems else 0)
        loss = core.data_loss
        labels = None if loss is None else (loss.epoch, str(loss.first), str(loss.last), loss.status,
                                            "" if loss.restored_to is None else str(loss.restored_to))
        if labels != self._loss:
            if self._loss is not None:
                DATA_LOSS_INFO.remove(*self._loss)
            if labels is not None:
                DATA_LOSS_INFO.labels(*labels).set(1)
            self._loss = labels
        for counter, now in ((RELOAD_FAILURES, core.reload_failures), (STORE_ERRORS, core.store_errors),
                             (DATA_LOSS_EVENTS, core.data_loss_events),
                             (DECISION_LOG_DROPPED, core.decision_log.dropped if core.decision_log else 0)):
            seen = self._seen.get(counter, 0)
            if now > seen:
                counter.inc(now - seen)
                self._seen[counter] = now

    def _run(self) -> None:
        while True:
            try:
                self.update()
            except Exception:  # metrics must never take anything down
                pass
            time.sleep(self.interval_s)
