"""The decision log: JSON lines, written by a background thread from a bounded queue.

Recording never blocks a decision: when the queue is full the entry is dropped and counted,
and a failed write is logged and counted; neither changes an answer.
"""
from __future__ import annotations

import logging
import queue
import random
import sys
import threading
import time
from typing import Any

import orjson

log = logging.getLogger("chatauthz.audit")


class DecisionLog:
    def __init__(self, target: str, *, deny_only: bool = False, sample: float = 1.0,
                 max_queue: int = 10_000) -> None:
        self.target = target
        self.deny_only = deny_only
        self.sample = sample
        self.dropped = 0
        self.failed = 0
        self.written = 0
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._run, name="chatauthz-decision-log", daemon=True)

    def start(self) -> None:
        if not self._thread.is_alive():
            self._thread.start()

    def stop(self) -> None:
        """Write what is queued (bounded), then end the writer."""
        if self._thread.is_alive():
            self.flush()
            self._queue.put(None)
            self._thread.join(timeout=5)

    def record(self, request: Any, decision: dict[str, Any]) -> None:
        """Queue one entry (cheap; never raises, never waits)."""
        if self.deny_only and decision.get("allowed"):
            return
        if self.sample < 1.0 and random.random() >= self.sample:
            return
        entry = {"decisionId": decision.get("decisionId"), "time": time.time(),
                 "input": {"uid": request.uid, "action": request.action, "guid": request.guid,
                           "target": request.target, "context": dict(request.context)},
                 "allowed": decision.get("allowed"), "code": decision.get("code"),
                 "reason": decision.get("reason"), "layer": decision.get("layer"),
                 "policyHash": decision.get("policyHash"), "revision": decision.get("revision")}
        try:
            self._queue.put_nowait(orjson.dumps(entry) + b"\n")
        except queue.Full:
            self.dropped += 1

    def flush(self, timeout_s: float = 5.0) -> None:
        """Wait (bounded) until everything queued so far is written."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    def _run(self) -> None:
        stream: Any = None
        while True:
            line = self._queue.get()
            if line is None:
                self._queue.task_done()
                return
            try:
                if stream is None:
                    stream = sys.stdout.buffer if self.target == "-" else open(self.target, "ab")  # noqa: SIM115
                stream.write(line)
                stream.flush()
                self.written += 1
            except Exception as exc:  # a failed write never reaches the decision
                self.failed += 1
                stream = None
                log.warning("decision log write failed: %s", exc)
            finally:
                self._queue.task_done()
