"""A request body must arrive within a deadline (--body-timeout), else 408 and the connection
closes: a client that trickles its body must not keep what answers everyone else.

Both servers call the app once the headers are in; `wsgi.input.read()` then blocks the calling
thread until the body has arrived. gunicorn (gthread) reads a blocking socket, handed over as
environ["gunicorn.socket"]: at the deadline a watchdog shuts its read side, the recv returns and
the thread answers 408. granian reads in Rust (block_on over hyper's body stream, GIL released)
with no timeout and nothing Python can interrupt (upstream: wontfix, granian#728): the watchdog
answers 408 through granian's response handle, and the thread is freed when the body ends or the
client leaves (a client told 408 and "Connection: close" leaves; a hostile one need not).

Under granian (2.8) the read can't be moved off the thread that runs the app either: once the
app returns, granian closes the body (a read begun later gets b""), and if another thread is
still reading it, granian waits for that read holding the GIL, which stops the whole worker
until the body ends. Nor does granian tell whether a body is already in. So a stalled body holds
a granian thread, and what keeps /authorize answered is a pool with threads to spare that cost
nothing while no request stalls: sidecar/threadbank.py (told here when a body has been read).
"""
from __future__ import annotations

import logging
import socket
import sys
import threading
import time
from types import FrameType
from typing import Any

import orjson

from sidecar.errors import ChatAuthzError
from sidecar.threadbank import body_read

log = logging.getLogger("chatauthz.api")
TICK_S = 0.05


class BodyTimeoutError(ChatAuthzError):
    code = "ERR_BODY_TIMEOUT"

    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"The request body did not arrive within {timeout_s:g}s.", code=self.code, status=408)


class AlreadyAnsweredError(Exception):
    """The watchdog has answered 408 for this request; the app must not answer again."""


def timeout_response(timeout_s: float) -> tuple[list[tuple[str, str]], bytes]:
    data = orjson.dumps({"error": BodyTimeoutError(timeout_s).to_dict()})
    return [("Content-Type", "application/json"), ("Content-Length", str(len(data))),
            ("Connection", "close")], data


class BodyReader:
    """Reads request bodies with a deadline, whichever server calls the app."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._reading: dict[int, list[Any]] = {}  # reads under way: [deadline, handle, answered]
        self._lock = threading.Lock()
        self._watchdog: threading.Thread | None = None

    def read(self, environ: dict[str, Any], length: int) -> bytes:
        """The body (Content-Length `length`), else BodyTimeoutError (or AlreadyAnsweredError:
        granian's client has had its 408 from the watchdog)."""
        entry = [time.monotonic() + self.timeout_s, environ.get("gunicorn.socket") or sys._getframe(), False]
        key = id(entry)
        self._reading[key] = entry
        if self._watchdog is None:
            self._start_watchdog()
        try:
            raw: bytes = environ["wsgi.input"].read(length)
        finally:
            del self._reading[key]
        if entry[2]:
            raise AlreadyAnsweredError
        if len(raw) < length:  # cut off at the deadline, or the client left mid-body
            raise BodyTimeoutError(self.timeout_s)
        body_read()
        return raw

    def _start_watchdog(self) -> None:
        with self._lock:
            if self._watchdog is None:
                self._watchdog = threading.Thread(target=self._watch, name="chatauthz-body-deadlines",
                                                  daemon=True)
                self._watchdog.start()

    def _watch(self) -> None:
        """Wake at the earliest deadline of the reads under way (a read that starts meanwhile has a
        later one), so under steady load about once per timeout, not on a tick."""
        headers, data = timeout_response(self.timeout_s)
        while True:
            now = time.monotonic()
            earliest = now + self.timeout_s
            for entry in list(self._reading.values()):
                if entry[0] <= now:
                    entry[0] = float("inf")  # once
                    entry[2] = self._expire(entry[1], headers, data)
                else:
                    earliest = min(earliest, entry[0])
            time.sleep(max(earliest - now, TICK_S))

    def _expire(self, handle: Any, headers: list[tuple[str, str]], data: bytes) -> bool:
        """End one overdue read; True when the client has been answered here."""
        if isinstance(handle, socket.socket):  # gunicorn: the blocked recv returns b"" at once
            try:
                handle.shutdown(socket.SHUT_RD)
            except OSError:
                pass
            return False
        proto = _granian_proto(handle)
        if proto is None:
            log.warning("no granian response handle found: a slow body keeps its thread until it ends")
            return False
        proto.response_bytes(408, headers, data)
        return True


def _granian_proto(frame: FrameType | None) -> Any:
    """granian's response handle: the `proto` local of its WSGI runner, up the reading stack."""
    while frame is not None:
        proto = frame.f_locals.get("proto")
        if proto is not None and hasattr(proto, "response_bytes"):
            return proto
        frame = frame.f_back
    return None
