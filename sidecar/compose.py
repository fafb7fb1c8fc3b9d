"""The composition root: Settings -> a running Sidecar (policy, store, sync, watcher, decision log).

The server, the CLI and tests build through here; nothing here knows Flask.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from sidecar import metrics
from sidecar.audit import DecisionLog
from sidecar.config import Settings
from sidecar.core import Sidecar
from sidecar.errors import PolicyError, StoreError
from sidecar.policy import PolicySet, load_policy_texts
from sidecar.reload import Files, PolicyWatcher, read_files, read_settled
from sidecar.stores import redisconn, sqlite
from sidecar.stores.base import Store
from sidecar.stores.sqlite import SQLiteStore

log = logging.getLogger("chatauthz.compose")


def open_store(settings: Settings) -> Store:
    """Redis when configured, else the embedded SQLite file in the data folder."""
    if settings.redis_enabled:
        settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return redisconn.open_store(settings, recovery_grace_s=settings.redis_recovery_grace_s,
                                    seen_dir=settings.data_dir)
    if settings.store_id is None:  # serve made and pinned it: a worker never makes a new one
        settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # state and keys: owner only
    return SQLiteStore(settings.data_dir / "chatauthz.sqlite3", expect=settings.store_id)


def preflight(settings: Settings) -> Settings:
    """Before `serve` listens: a data folder and embedded database that work (else StoreError).
    Returns the settings with that database pinned (store_id) for the workers."""
    store_id = sqlite.preflight(settings.data_dir, None if settings.redis_enabled else settings.data_dir / "chatauthz.sqlite3")
    return replace(settings, store_id=store_id)


def build_sidecar(settings: Settings, *, start_threads: bool = True) -> Sidecar:
    """Refuses an invalid policy (PolicyError) and a store it cannot load (StoreError)."""
    try:
        files: Files | None = read_settled(settings.policies, settings.model_path, settings.policy_settle_s)
    except PolicyError:
        files = None  # still being written: load_with_fallback waits once more, the watcher takes it later
    policy, problems = load_with_fallback(settings, files)
    try:
        store = open_store(settings)
    except StoreError as exc:
        raise StoreError(f"failed to open the store: {exc.message}") from exc
    decision_log = None
    if settings.decision_log:
        decision_log = DecisionLog(settings.decision_log, deny_only=settings.decision_log_deny_only,
                                   sample=settings.decision_log_sample)
    def watcher(on_change: Callable[[Files], object]) -> PolicyWatcher:  # made even if off: SIGHUP uses it
        return PolicyWatcher(settings.policies, settings.model_path, on_change, interval_s=settings.policy_watch_s,
                             settle_s=settings.policy_settle_s, loaded=files)
    core = Sidecar(policy, store, revision_wait_s=settings.revision_wait_s, revision_waiters=settings.threads // 2,
                   max_staleness_s=settings.max_staleness_s,
                   policy_loader=lambda files: load_with_fallback(settings, files), policy_problems=problems,
                   decision_log=decision_log, on_decision=metrics.observe_decision, on_write=metrics.observe_write,
                   watcher=watcher, gauges=metrics.GaugeUpdater, sync_interval_s=settings.sync_interval_s,
                   cache_entries=settings.cache_entries or None)
    if start_threads:
        core.start()
    return core


LAST_GOOD = "last-good-policy"


def load_with_fallback(settings: Settings, files: Files | None = None) -> tuple[PolicySet, list[str]]:
    """The policy made of `files` (default: the files on disk once settled), kept as the last
    good one; if it is invalid, the last good one.

    Returns (policy, problems of the files on disk). Worker processes restarted by the server
    (say after SIGHUP) thus never die on, nor serve, a broken edit; with no last good policy
    the PolicyError stands (the CLI checks before starting, so that is the first start).
    """
    try:
        if files is None:
            files = read_settled(settings.policies, settings.model_path, settings.policy_settle_s)
        texts, model_text = _texts(files)
        policy = load_policy_texts(texts, model_text)
    except PolicyError as exc:
        saved = settings.data_dir / LAST_GOOD
        if not saved.is_dir():
            raise
        texts, model_text = _texts(read_files(saved, saved / "model.conf"))
        return load_policy_texts(texts, model_text), exc.problems
    _save_last_good(settings.data_dir / LAST_GOOD, texts, model_text)
    return policy, []


def _texts(files: Files) -> tuple[dict[str, str], str]:
    """(policy file name -> text, model.conf's text) of exactly these bytes: loaded and hashed as read."""
    texts: dict[str, str] = {}
    problems: list[str] = []
    for name, data in files.items():
        if isinstance(data, str):  # why it could not be read
            problems.append(f"{name}:1: {data}")
            continue
        try:
            texts[name] = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(f"{name}:1: cannot read it as UTF-8: {exc}")
    if problems:
        raise PolicyError(problems)
    return texts, texts.pop("model.conf")


def _save_last_good(folder: Path, texts: dict[str, str], model_text: str) -> None:
    """Write atomically (temp files, then rename), so a crash never leaves half a policy."""
    try:
        folder.mkdir(mode=0o700, exist_ok=True)  # not its parent: a data folder gone stays gone
        for name, text in [*texts.items(), ("model.conf", model_text)]:
            temp = folder / f".{name}.tmp"
            temp.write_text(text, encoding="utf-8")
            os.replace(temp, folder / name)
    except OSError as exc:
        log.warning("could not keep the last good policy in %s: %s", folder, exc)
