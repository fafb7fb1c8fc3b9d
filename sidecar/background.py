"""What a Sidecar runs beside its requests: each part (Redis sync, policy watcher, gauges,
decision log) is a Background, started and stopped by Sidecar.start()/stop(). Periodic is
the shared loop of the ones that poll."""
from __future__ import annotations

import logging
import threading
from typing import Protocol

log = logging.getLogger("chatauthz.background")


class Background(Protocol):
    def start(self) -> None:
        """Start working (in a daemon thread); once."""

    def stop(self) -> None:
        """Stop, bounded (a few seconds at most)."""


class Periodic:
    """Calls tick() every interval_s in a daemon thread until stop(); interval_s <= 0 never
    starts. A failing tick is logged and the loop goes on: a poller must not die silently."""

    def __init__(self, name: str, interval_s: float) -> None:
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def tick(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        if self.interval_s > 0 and not self._thread.is_alive() and not self._stop.is_set():
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - logged; the next tick tries again
                log.exception("%s failed", self._thread.name)
