"""Prometheus metrics. Under several worker processes, PROMETHEUS_MULTIPROC_DIR (set by
sidecar.serving before the workers start) makes /metrics add up every worker's values.

prometheus_client chooses where a value lives (in memory, or in a per-process file in that
folder) when the value is made, from the value class it picked when it was first imported. The
server process imports this module before it sets the folder and then forks its workers, so the
metrics are made on first use in each process (`current()`), with the value class picked again
from the environment at that moment. Dead workers' gauge files are dropped at each scrape.

Recording is cheap on the hot path: label children are cached, and gauges (revision,
staleness, policy) are refreshed by a background thread, not per request.
"""
from __future__ import annotations

import glob
import logging
import os
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.metrics_core import Metric

from sidecar.background import Periodic

if TYPE_CHECKING:
    from sidecar.core import Stats

FAST_BUCKETS = (5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2, 0.1, 1.0)
POLICY_INFO_NAME = "chatauthz_policy_info"
DATA_LOSS_INFO_NAME = "chatauthz_data_loss_info"


class Metrics:
    """This process's metrics, in their own registry (rendered directly without a shared folder)."""

    def __init__(self) -> None:
        self.folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
        if bool(getattr(values.ValueClass, "_multiprocess", False)) != bool(self.folder):  # picked too early
            values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
        r = self.registry = CollectorRegistry()
        self.decisions = Counter("chatauthz_decisions_total", "Decisions by result, layer and code",
                                 ["result", "layer", "code"], registry=r)
        self.writes = Counter("chatauthz_writes_total", "Management writes by result: committed (a new "
                              "revision), unchanged, refused (4xx), failed (store error)", ["result"], registry=r)
        self.decision_seconds = Histogram("chatauthz_decision_seconds", "Time to decide one check (in process)",
                                          buckets=FAST_BUCKETS, registry=r)
        self.request_seconds = Histogram("chatauthz_request_seconds", "HTTP request latency by route and status",
                                         ["route", "method", "status"], buckets=FAST_BUCKETS, registry=r)
        # live* gauges: a worker's values go with it (see forget_dead_workers)
        self.policy_info = Gauge(POLICY_INFO_NAME, "The policy content hashes served by a live worker (value 1)",
                                 ["hash"], multiprocess_mode="livemax", registry=r)
        self.revision = Gauge("chatauthz_revision", "Runtime-state revision applied (the lowest of the workers)",
                              multiprocess_mode="livemin", registry=r)
        self.staleness = Gauge("chatauthz_staleness_seconds", "Seconds since the store was last heard from",
                               multiprocess_mode="livemax", registry=r)
        self.policy_invalid = Gauge("chatauthz_policy_invalid", "1 while the policy files on disk are refused",
                                    multiprocess_mode="livemax", registry=r)
        self.reload_failures = Counter("chatauthz_policy_reload_failures_total", "Policy changes refused as invalid",
                                       registry=r)
        self.store_errors = Counter("chatauthz_store_errors_total", "Store reads or writes that failed", registry=r)
        self.decision_log_dropped = Counter("chatauthz_decision_log_dropped_total", "Decision log entries dropped",
                                            registry=r)
        self.data_loss_events = Counter("chatauthz_data_loss_events_total",
                                        "Times the store was found without writes this sidecar had applied", registry=r)
        self.data_loss_info = Gauge(DATA_LOSS_INFO_NAME, "The last data loss (value 1): the epoch, the revisions "
                                    "lost, and up to which revision they were written back",
                                    ["epoch", "first", "last", "status", "restored_to"],
                                    multiprocess_mode="livemax", registry=r)
        self.decision_children: dict[tuple[str, str, str], Any] = {}
        self.request_children: dict[tuple[str, str, int], Any] = {}


_current: Metrics | None = None
_made = threading.Lock()


def current() -> Metrics:
    """This process's metrics, made on first use (after the server has set the folder)."""
    global _current
    if _current is None:
        with _made:
            if _current is None:
                _current = Metrics()
    return _current


class _Pending:
    """What the hot path counted since the last flush, in plain ints under one short lock (a
    multiprocess value write costs several microseconds; a request records several)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.decisions: dict[tuple[str, str, str], int] = {}
        self.decision_buckets = [0] * (len(FAST_BUCKETS) + 1)
        self.decision_sum = 0.0
        self.requests: dict[tuple[str, str, int], list[float]] = {}  # key -> [sum, *bucket counts]


_pending = _Pending()
_BOUNDS = list(FAST_BUCKETS)


def observe_decision(body: dict[str, Any], seconds: float) -> None:
    key = ("allowed" if body["allowed"] else "denied", body.get("layer") or "", body.get("code") or "")
    bucket = bisect_left(_BOUNDS, seconds)
    pending = _pending
    with pending.lock:
        pending.decisions[key] = pending.decisions.get(key, 0) + 1
        pending.decision_buckets[bucket] += 1
        pending.decision_sum += seconds


HOT_ROUTES = ("/authorize", "/authorize/batch")
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    key = (route, method, status)
    if route not in HOT_ROUTES:  # rare: recorded at once, so a scrape sees itself and every write
        _observe_now(key, seconds)
        return
    bucket = bisect_left(_BOUNDS, seconds) + 1
    pending = _pending
    with pending.lock:
        row = pending.requests.get(key)
        if row is None:
            row = pending.requests[key] = [0.0] * (len(FAST_BUCKETS) + 2)
        row[0] += seconds
        row[bucket] += 1


def _observe_now(key: tuple[str, str, int], seconds: float) -> None:
    try:
        m = _current or current()
        child = m.request_children.get(key)
        if child is None:
            child = m.request_children[key] = m.request_seconds.labels(key[0], key[1], str(key[2]))
        child.observe(seconds)
    except OSError:
        _lost()


def flush() -> None:
    """Move what the hot path counted into this process's metrics (every second, and before a
    scrape): the counts are exact, at most one flush interval late."""
    global _pending
    with _pending.lock:
        done, _pending = _pending, _Pending()
    if not (done.decisions or done.requests):
        return
    try:
        m = _current or current()
        for key, count in done.decisions.items():
            child = m.decision_children.get(key)
            if child is None:
                child = m.decision_children[key] = m.decisions.labels(*key)
            child.inc(count)
        _add_observations(m.decision_seconds, done.decision_sum, done.decision_buckets)
        for (route, method, status), row in done.requests.items():
            child = m.request_children.get((route, method, status))
            if child is None:
                child = m.request_children[(route, method, status)] = m.request_seconds.labels(
                    route, method, str(status))
            _add_observations(child, row[0], row[1:])
    except OSError:
        _lost()


def _add_observations(histogram: Any, total: float, buckets: list[Any]) -> None:
    """Add many observations at once: their sum and per-bucket counts (prometheus_client keeps
    non-cumulative bucket values, one per upper bound, +Inf last)."""
    if not any(buckets):
        return
    histogram._sum.inc(total)
    for value, count in zip(histogram._buckets, buckets, strict=True):
        if count:
            value.inc(count)


def observe_write(result: str) -> None:
    try:
        (_current or current()).writes.labels(result).inc()
    except OSError:
        _lost()


_lost_once = threading.Event()


def _lost() -> None:
    if not _lost_once.is_set():
        _lost_once.set()
        logging.getLogger("chatauthz.metrics").exception("a metric could not be recorded (and others may "
                                                         "not be); requests are served regardless")


def render() -> tuple[bytes, str]:
    """The exposition text, added up across worker processes when they share a folder."""
    flush()
    m = current()
    if m.folder:
        forget_dead_workers(m.folder)
        source: Any = multiprocess.MultiProcessCollector(None, m.folder)  # type: ignore[no-untyped-call]
    else:
        source = m.registry
    registry = CollectorRegistry()
    registry.register(_Served(source))
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _Served:
    """`source`'s metrics without the policy hashes no live worker serves (value 0): a series
    cannot be removed from a worker's file, so a replaced hash is set to 0 instead."""

    def __init__(self, source: Any) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        for metric in self.source.collect():
            if metric.name in (POLICY_INFO_NAME, DATA_LOSS_INFO_NAME):
                metric.samples = [s for s in metric.samples if s.value]
            yield metric


def forget_dead_workers(folder: str) -> None:
    """Drop the live* gauge files of processes that are gone (counters and histograms stay:
    what a dead worker counted still happened)."""
    for path in glob.glob(os.path.join(folder, "gauge_live*_*.db")):
        pid = int(path.rsplit("_", 1)[1].removesuffix(".db"))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, folder)  # type: ignore[no-untyped-call]
        except PermissionError:
            pass  # alive, someone else's


class GaugeUpdater(Periodic):
    """Refreshes this process's gauges from the sidecar's stats() every interval (and before a
    scrape)."""

    def __init__(self, stats: Callable[[], Stats], interval_s: float = 1.0) -> None:
        super().__init__("chatauthz-metrics", interval_s)
        self.stats = stats
        self._hash: str | None = None
        self._loss: tuple[str, ...] | None = None
        self._seen: dict[Any, int] = {}  # counter -> the sidecar's count already added

    def tick(self) -> None:
        self.update()

    def update(self) -> None:
        flush()
        m, core = current(), self.stats()
        digest = core.policy_hash
        if digest != self._hash:
            if self._hash is not None:
                m.policy_info.labels(self._hash).set(0)  # not removed: see _Served
            m.policy_info.labels(digest).set(1)
            self._hash = digest
        m.revision.set(core.revision)
        m.staleness.set(core.staleness_s)
        m.policy_invalid.set(1 if core.policy_invalid else 0)
        loss = core.data_loss
        labels = None if loss is None else (loss.epoch, str(loss.first), str(loss.last), loss.status,
                                            "" if loss.restored_to is None else str(loss.restored_to))
        if labels != self._loss:
            if self._loss is not None:  # a series cannot leave a worker's file: 0 hides it
                m.data_loss_info.labels(*self._loss).set(0)
            if labels is not None:
                m.data_loss_info.labels(*labels).set(1)
            self._loss = labels
        for counter, now in ((m.reload_failures, core.reload_failures), (m.store_errors, core.store_errors),
                             (m.data_loss_events, core.data_loss_events),
                             (m.decision_log_dropped, core.decision_log_dropped)):
            seen = self._seen.get(counter, 0)
            if now > seen:
                counter.inc(now - seen)
                self._seen[counter] = now
