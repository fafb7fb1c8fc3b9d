"""Spare granian threads for requests that stall, at no cost while none does (granian only).

A body that trickles in holds the granian thread that reads it until it ends or its client leaves,
and the read can't be given to another thread (api/bodies.py): a worker needs more threads than
bodies stalled at once. But a granian pool larger than the load keeps idle threads, and granian
wakes one per request: 64 threads cost 11-37% of /authorize req/s here at 16 / 64 connections.

So granian's pool is `threads + RESERVE` per worker (serving.py), and this bank keeps the extra
threads parked on a lock, not idle in granian. It counts the threads out in granian's pool (seen
in a request within granian's idle timeout less 5 s, and not parked: never more than there are),
and a thread parks after its request (its answer is sent by then) while more than `threads` are
out, none has stalled, and its request's body has been read or was empty (one parked with its
body unread would hold back its connection's next request). A monitor looks every STALL_S: while
any request has been under way for longer (a body still arriving), every parked thread goes back
to granian and none parks, since stalled bodies come in bursts (a slow client's reconnects).
So under load without stalls granian grows its pool to the cap, each extra thread parks after
one request, and `threads` threads serve as before; a stall is relieved within 2 x STALL_S.
Up to RESERVE bodies per worker can stall at once without cost to the others; beyond that they
hold every thread until the watchdog's 408 at the deadline makes their clients leave (a client
that stays keeps its thread).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

RESERVE = 64  # extra granian threads per worker, parked until requests stall
STALL_S = 0.05  # a request under way for longer is taken as stalled (also how often the bank looks)
IDLE_TIMEOUT_S = 30  # granian's blocking_threads_idle_timeout (serving.py passes it)
_read = threading.local()  # .done: this thread's request has had its whole body read


def body_read() -> None:
    """The app has read the whole request body (api/bodies.py): its thread may park after it."""
    _read.done = True


class ThreadBank:
    def __init__(self, threads: int, stall_s: float = STALL_S, idle_timeout_s: float = IDLE_TIMEOUT_S) -> None:
        self.threads = threads
        self.stall_s = stall_s
        self.gone_s = idle_timeout_s - 5  # a thread unseen for longer may have left granian's pool
        self._started: dict[int, float] = {}  # thread id -> when its request began (threads at work)
        self._seen: dict[int, float] = {}  # thread id -> when it last began a request
        self._parked_ids: set[int] = set()
        self._out = 0  # threads in granian's pool, not parked: counted at each look, then kept
        self._stalled = 0  # requests under way for longer than stall_s, at the last look
        self._wake = 0  # wake-ups given to parked threads and not yet taken
        self._stopping = False
        self._cond = threading.Condition(threading.Lock())
        self._monitor: threading.Thread | None = None

    def wrap(self, runner: Callable[[Any, dict[str, Any]], Any]) -> Callable[[Any, dict[str, Any]], Any]:
        """granian's WSGI runner(proto, scope), banking the thread after its answer."""
        started, seen = self._started, self._seen

        def run(proto: Any, scope: dict[str, Any]) -> Any:
            me = threading.get_ident()
            started[me] = seen[me] = time.monotonic()
            _read.done = False
            try:
                return runner(proto, scope)
            finally:
                del started[me]
                if (self._out > self.threads and not self._stalled and not self._stopping
                        and (_read.done or not scope.get("CONTENT_LENGTH", "").strip("0"))):
                    self._park(me)
        if self._monitor is None:
            self._monitor = threading.Thread(target=self._watch, name="chatauthz-thread-bank", daemon=True)
            self._monitor.start()
        return run

    def stop(self) -> None:
        """Shutting down: every parked thread goes back to granian, and none parks again."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def _park(self, me: int) -> None:
        """Only after the request's body is read (or absent): a thread parked with a body unread
        would keep its connection from its next request. And only while more than `threads`
        others are out in granian's pool (the count may fall short of the truth, never exceed
        it: parking never leaves fewer) and none has stalled."""
        with self._cond:
            if self._out <= self.threads or self._stalled or self._stopping:
                return
            self._out -= 1
            self._parked_ids.add(me)
            while not self._wake and not self._stopping:
                self._cond.wait()
            if self._wake:
                self._wake -= 1
            self._parked_ids.discard(me)

    def _watch(self) -> None:
        while not self._stopping:
            time.sleep(self.stall_s)
            now = time.monotonic()
            stalled = sum(1 for t in list(self._started.values()) if now - t > self.stall_s)
            with self._cond:
                parked = self._parked_ids
                self._out = sum(1 for ident, t in list(self._seen.items())
                                if now - t < self.gone_s and ident not in parked)
                for ident in [i for i, t in self._seen.items() if now - t >= self.gone_s and i not in parked]:
                    del self._seen[ident]
                self._stalled = stalled
                n = len(parked) - self._wake if stalled else 0
                if n > 0:  # all of them: stalls come in bursts (a slow client's reconnects)
                    self._wake += n
                    self._out += n
                    self._cond.notify(n)

    def counts(self) -> dict[str, int]:
        """Requests under way, of which stalled (at the last look), threads out and parked."""
        return {"working": len(self._started), "stalled": self._stalled, "out": self._out,
                "parked": len(self._parked_ids)}


_bank: ThreadBank | None = None


def supported() -> bool:
    """This granian has the WSGI runner wrapper that install() replaces (its server's workers get
    the RESERVE only then: unbanked, they would cost throughput)."""
    try:
        import granian.server.mp as mp
    except ImportError:
        return False
    return callable(getattr(mp, "_wsgi_call_wrap", None))


def install(threads: int) -> ThreadBank | None:
    """In a granian worker, before it wraps the app (serving.worker_app): bank its extra threads."""
    global _bank
    if not supported():
        return None
    import granian.server.mp as mp

    if _bank is None:
        bank = _bank = ThreadBank(threads)
        wrap = mp._wsgi_call_wrap  # type: ignore[attr-defined]

        def banked_wrap(*args: Any, **kwargs: Any) -> Any:
            return bank.wrap(wrap(*args, **kwargs))
        mp._wsgi_call_wrap = banked_wrap  # type: ignore[attr-defined]
    return _bank


def stop() -> None:
    if _bank is not None:
        _bank.stop()
