"""Keeps a sidecar's state current with Redis: pub/sub hints plus a periodic revision check.

A message is only a hint; on every hint, every tick and every reconnect the sidecar catches up
from the journal stream, from its last revision (or resyncs in full), so a lost message, a
dropped connection or a restarted Redis ends in the same state. Hints that queued up meanwhile
are taken together (one catch-up reads them all), and a hint for a revision the sidecar was
already handed (its own write) is not followed. What a message says is never applied: anyone
who may PUBLISH on the channel could send it. Failures back off (bounded) and are reported,
never swallowed.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from sidecar.stores.base import RecoveryPending

log = logging.getLogger("chatauthz.sync")

NOT_READY, OK, DEGRADED = "NOT_READY", "OK", "DEGRADED"
MIN_BACKOFF_S = 0.1
DRAIN_MAX = 10_000  # hints taken together at most, before catching up


class RedisSync:
    def __init__(self, client: redis.Redis, channel: str, catch_up: Callable[[], None], *,
                 interval_s: float = 1.0, max_backoff_s: float = 5.0,
                 known: Callable[[], tuple[str | None, int]] | None = None) -> None:
        self.client = client
        self.known = known  # (epoch, revision) the sidecar already has or is applying
        self.channel = channel
        self.catch_up = catch_up
        self.interval_s = interval_s
        self.max_backoff_s = max_backoff_s
        self.status = NOT_READY
        self._backoff = MIN_BACKOFF_S
        self.message = "not started"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chatauthz-sync", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._listen()
            except Exception as exc:  # any failure: report, back off, reconnect, catch up
                self.status, self.message = DEGRADED, f"{type(exc).__name__}: {exc}"
                log.warning("sync with Redis failed (retrying in %.1fs): %s", self._backoff, self.message)
                if isinstance(exc, RecoveryPending):  # look again soon: the grace period is counting
                    self._stop.wait(min(self._backoff, self.interval_s))
                else:
                    self._stop.wait(self._backoff)
                self._backoff = min(self._backoff * 2, self.max_backoff_s)

    def _listen(self) -> None:
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        try:
            pubsub.subscribe(self.channel)
            self.catch_up()  # whatever was published while we were away
            self.status, self.message = OK, "subscribed"
            self._backoff = MIN_BACKOFF_S  # healthy again: the next failure starts from the bottom
            last_check = time.monotonic()
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=min(self.interval_s, 0.5))
                news = False
                for _ in range(DRAIN_MAX if message is not None else 0):  # and what else queued meanwhile
                    if message is None:
                        break
                    news = self._news(message) or news  # every queued hint is looked at
                    message = pubsub.get_message(timeout=0)
                if news or time.monotonic() - last_check >= self.interval_s:
                    self.catch_up()  # from Redis's journal, whatever the hints said
                    last_check = time.monotonic()
                    self.status, self.message = OK, "subscribed"
        finally:
            try:
                pubsub.close()
            except redis.RedisError:
                pass

    def _news(self, message: dict[str, Any]) -> bool:
        """Is the hinted revision one the sidecar was not already handed? (Anything else, say a
        message that is not a hint, is news: the catch-up reads what is true.)"""
        if self.known is None:
            return True
        try:
            hint = json.loads(message["data"])
            epoch, revision = self.known()
            return bool(str(hint["epoch"]) != epoch or int(hint["revision"]) > revision)
        except (ValueError, KeyError, TypeError):
            return True
