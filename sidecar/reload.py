"""Reads the policy files and model.conf only once they have settled; watches them for changes.

A file rewritten in place (truncate, write, write) is half written for a while, and half a
YAML file is often valid YAML with a different meaning. So a change is taken only once the files'
bytes have stayed the same for `settle_s`, and the bytes compared are the bytes handed over to be
loaded and hashed: nothing re-reads the files in between. Polling (default every second) needs
no extra dependency and works on every filesystem and on mounted volumes. Imports: policy.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sidecar.background import Periodic
from sidecar.errors import PolicyError
from sidecar.policy.loader import POLICY_FILES

log = logging.getLogger("chatauthz.reload")

Files = dict[str, bytes | str]  # file name -> its bytes, or (a str) why it could not be read
UNSETTLED_TIMEOUTS = 10  # read_settled gives up after this many settle intervals (at least 5 s)
TIMESTAMP_SLACK_S = 1.0  # filesystems that keep whole seconds make a change look up to 1 s older


def read_files(policy_dir: Path, model_path: Path) -> Files:
    """One read of every file a policy is built from: catalogue, roles, scopes and model.conf."""
    files: Files = {}
    for name, path in [(n, policy_dir / n) for n in POLICY_FILES] + [("model.conf", model_path)]:
        try:
            files[name] = path.read_bytes()
        except OSError as exc:
            files[name] = f"cannot read {path}: {exc}"
    return files


def read_settled(policy_dir: Path, model_path: Path, settle_s: float) -> Files:
    """The files once unchanged for settle_s: at once when none of them was touched (ctime) in
    the last settle_s, else read again every settle_s until two reads agree. PolicyError when
    they keep changing for UNSETTLED_TIMEOUTS intervals."""
    before = _last_touched(policy_dir, model_path)
    files = read_files(policy_dir, model_path)
    if settle_s <= 0 or (before == _last_touched(policy_dir, model_path)
                         and time.time() - before >= settle_s + TIMESTAMP_SLACK_S):
        return files
    timeout_s = max(5.0, UNSETTLED_TIMEOUTS * settle_s)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(settle_s)
        again = read_files(policy_dir, model_path)
        if again == files:
            return files
        files = again
    raise PolicyError([f"{name}:1: still being written after {timeout_s:g}s; not loaded" for name in files])


def _last_touched(policy_dir: Path, model_path: Path) -> float:
    """The newest change time (content or metadata) of the files; now, if one cannot be read."""
    newest = 0.0
    for path in [policy_dir / n for n in POLICY_FILES] + [model_path]:
        try:
            stat = path.stat()
        except OSError:
            return time.time()
        newest = max(newest, stat.st_mtime, stat.st_ctime)
    return newest


class PolicyWatcher(Periodic):
    """Polls the files every interval_s; hands a change to on_change once it has settled.

    `loaded` is the files the sidecar serves now. One lock covers each read and its hand-over,
    so a SIGHUP reload and a poll never hand over files older than the ones already handed over.
    """

    def __init__(self, policy_dir: Path, model_path: Path, on_change: Callable[[Files], object], *,
                 interval_s: float = 1.0, settle_s: float = 1.0, loaded: Files | None = None) -> None:
        super().__init__("chatauthz-policy-watch", interval_s)
        self.policy_dir = policy_dir
        self.model_path = model_path
        self.on_change = on_change
        self.settle_s = settle_s
        self._loaded: Files = loaded if loaded is not None else {}
        self._pending: tuple[Files, float] | None = None  # a change, and when it was first seen
        self._lock = threading.Lock()

    def tick(self) -> None:
        self.check_now()

    def check_now(self) -> None:
        """One poll: a change is handed over once the same bytes have been read for settle_s."""
        with self._lock:
            current, now = read_files(self.policy_dir, self.model_path), time.monotonic()
            if current == self._loaded:
                self._pending = None
            elif self._pending is None or self._pending[0] != current:
                self._pending = (current, now)
            elif now - self._pending[1] >= self.settle_s:
                self._hand_over(current)

    def reload_now(self) -> None:
        """Load the files once they have settled, changed or not (SIGHUP)."""
        with self._lock:
            try:
                files = read_settled(self.policy_dir, self.model_path, self.settle_s)
            except PolicyError as exc:
                log.error("policy files not reloaded: %s", "; ".join(exc.problems))
                return
            self._hand_over(files)

    def _hand_over(self, files: Files) -> None:
        self._loaded, self._pending = files, None
        self.on_change(files)
