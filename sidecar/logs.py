"""Structured JSON logs, one object a line, each with the request id of the request it serves.

The request id comes from X-Request-Id (when it is a sane token) or is made; secrets never
reach a log: api keys are never passed to a logger, and URLs are logged through `redact`.
"""
from __future__ import annotations

import contextvars
import itertools
import json
import logging
import logging.handlers
import queue
import re
import sys
import time
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
_TOKEN = re.compile(r"[A-Za-z0-9._:-]{1,128}")


_made = itertools.count(1)
_PREFIX = uuid.uuid4().hex[:16]  # per process: made ids are unique without a uuid4 per request


def take_request_id(header: str | None) -> str:
    """The caller's X-Request-Id if it is a sane token, else a new one; set for this context."""
    value = header if header and _TOKEN.fullmatch(header) else f"{_PREFIX}{next(_made):016x}"
    request_id.set(value)
    return value


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                 + f".{int(record.msecs):03d}Z", "level": record.levelname, "logger": record.name,
                 "message": record.getMessage()}
        rid = getattr(record, "requestId", None) or request_id.get()
        if rid:
            entry["requestId"] = rid
        for key in ("actor", "route", "status", "revision"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class DroppingQueueHandler(logging.handlers.QueueHandler):
    """Hands records to a writer thread; when the queue is full (stderr stuck), drops them.

    A request must never wait on a log sink: a full pipe or a slow terminal costs log lines,
    counted in `dropped`, not latency.
    """

    dropped = 0

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record.requestId = request_id.get()  # the writer thread has no request context
        prepared: logging.LogRecord = super().prepare(record)
        return prepared

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            DroppingQueueHandler.dropped += 1


def configure(level: str = "INFO", max_queue: int = 10_000) -> None:
    """JSON lines on stderr for the chatauthz loggers, written by a background thread."""
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(JsonFormatter())
    records: queue.Queue[logging.LogRecord] = queue.Queue(maxsize=max_queue)
    logging.handlers.QueueListener(records, stream).start()
    handler = DroppingQueueHandler(records)
    root = logging.getLogger("chatauthz")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    logging.captureWarnings(True)  # a library's warnings.warn would print a plain line on stderr
    warnings_log = logging.getLogger("py.warnings")
    warnings_log.handlers[:] = [handler]
    warnings_log.propagate = False


def server_log_config(*loggers: str, level: str = "WARNING") -> dict[str, Any]:
    """A logging.config dict for the WSGI server's own loggers (and the root): JSON lines on stderr."""
    return {"version": 1, "disable_existing_loggers": False,
            "formatters": {"json": {"()": JsonFormatter}},
            "handlers": {"json": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
            "root": {"level": level, "handlers": ["json"]},
            "loggers": {name: {"level": level, "handlers": ["json"], "propagate": False} for name in loggers}}


def redact(url: str) -> str:
    """A URL without its password."""
    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url
