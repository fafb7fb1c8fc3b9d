"""Watches the policy files and model.conf; calls back when their contents change.

Polling (default every second) on a content fingerprint: no extra dependency, works on every
filesystem and in containers with mounted volumes. The callback builds aside and swaps.
"""
from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("chatauthz.reload")


def fingerprint(policy_dir: Path, model_path: Path) -> str:
    """A hash of every policy file's name and content, and model.conf's."""
    digest = hashlib.sha256()
    for path in sorted(policy_dir.glob("*.yaml")) + [model_path]:
        try:
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        except OSError as exc:
            digest.update(f"{path.name}: unreadable {exc}".encode())
    return digest.hexdigest()


class PolicyWatcher:
    def __init__(self, policy_dir: Path, model_path: Path, on_change: Callable[[], None],
                 interval_s: float = 1.0) -> None:
        self.policy_dir = policy_dir
        self.model_path = model_path
        self.on_change = on_change
        self.interval_s = interval_s
        self._seen = fingerprint(policy_dir, model_path)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chatauthz-policy-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def check_now(self) -> None:
        current = fingerprint(self.policy_dir, self.model_path)
        if current != self._seen:
            self._seen = current
            self.on_change()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check_now()
            except Exception:  # never let the watcher die silently
                log.exception("policy watch failed")
