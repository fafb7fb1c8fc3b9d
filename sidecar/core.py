"""The composition root: policy + store + engine + runtime state. Knows nothing of Flask.

Decisions run on in-memory state under a short lock and never wait on store I/O (except a
request that asks for a newer revision). Catching up reads the store outside the lock and
applies under it; a full resync builds a new state aside and swaps it in. Writes run their
plan inside the store's exclusive transaction on caught-up state, then apply the committed ops.
"""
from __future__ import annotations

import itertools
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from sidecar.audit import DecisionLog
from sidecar.engine import AuthzRequest, Decision, Engine
from sidecar.errors import ChatAuthzError, PolicyError, StoreError
from sidecar.policy import PolicySet
from sidecar.state import Op, RuntimeState, with_before
from sidecar.stores.base import ResyncNeeded, Store

log = logging.getLogger("chatauthz.core")
STALE_CODE = "ERR_STATE_TOO_STALE"
NOT_LOADED_CODE = "ERR_STATE_NOT_LOADED"


class Sidecar:
    def __init__(self, policy: PolicySet, store: Store, *, revision_wait_s: float = 2.0,
                 max_staleness_s: float | None = None, synced: bool = False,
                 policy_loader: Callable[[], tuple[PolicySet, list[str]]] | None = None,
                 decision_log: DecisionLog | None = None, revision_waiters: int = 2) -> None:
        self.engine = Engine(policy)  # swapped whole on reload; a decision reads it once
        self.policy_loader = policy_loader
        self.policy_problems: list[str] = []  # why the files on disk are not being served
        self.reload_failures = 0
        self.decision_log = decision_log
        self.store = store
        self.revision_wait_s = revision_wait_s
        self._waiters = threading.BoundedSemaphore(revision_waiters)  # 0: never wait
        self.max_staleness_s = max_staleness_s
        self.synced = synced  # True when a sync thread keeps this state current (Redis)
        self._lock = threading.RLock()        # guards self.state for decisions and applies
        self._write_lock = threading.Lock()   # one writer at a time in this process
        self._catch_up_lock = threading.Lock()
        self.loaded = True
        try:
            self.state: RuntimeState = store.load()
        except StoreError as exc:
            if not synced:
                raise  # the embedded file must open; Redis may come later
            log.error("starting without state: %s; denying until the first load", exc.message)
            self.state, self.loaded = RuntimeState(), False
        self.last_heard = time.monotonic()
        self.store_error: str | None = None
        self.sync: Any = None  # a RedisSync when synced (set by sidecar.compose)
        self.watcher: Any = None  # a PolicyWatcher (set by sidecar.compose)
        self.on_decision: Callable[[dict[str, Any], float], None] | None = None  # metrics hook
        self.store_errors = 0
        self.gauges: Any = None  # a metrics.GaugeUpdater (set by sidecar.compose)
        self._ids = itertools.count(1)
        self._id_prefix = f"{secrets.token_hex(4)}{os.getpid():x}"

    @property
    def policy(self) -> PolicySet:
        return self.engine.policy

    def reload_policy(self) -> bool:
        """Build the policy files aside and swap them in; a broken policy never replaces a good one."""
        if self.policy_loader is None:
            return False
        try:
            policy, problems = self.policy_loader()
            if problems:
                raise PolicyError(problems)
            engine = Engine(policy)
            with self._lock:
                engine.decide(AuthzRequest("chatauthz-warmup", next(iter(policy.actions))), self.state)
        except PolicyError as exc:
            self.reload_failures += 1
            self.policy_problems = exc.problems
            log.error("policy change refused; still serving %s:\n  %s", self.policy.content_hash,
                      "\n  ".join(exc.problems))
            return False
        except ChatAuthzError:
            pass  # the warm-up request itself was refused (e.g. the action needs a group): fine
        self.engine = engine
        self.policy_problems = []
        log.warning("policy reloaded: now serving %s", policy.content_hash)
        return True

    # -- keeping up with the store ---------------------------------------------------------
    def refresh(self) -> None:
        """Embedded store: apply what other workers committed (cheap when nothing did)."""
        try:
            if self.store.changed(self.state.revision):
                self.catch_up()
            if self.store_error is not None:
                self.store_error = None
        except StoreError as exc:
            self.store_error = exc.message
            self.store_errors += 1
            raise

    def catch_up(self) -> None:
        """Bring state to the store's revision: replay the journal, or resync in full."""
        with self._catch_up_lock:
            self._catch_up_locked()

    def _catch_up_locked(self) -> None:
        try:
            entries = self.store.changes_since(self.state.revision)
            with self._lock:
                self._apply_entries(entries)
        except ResyncNeeded as why:
            log.warning("full resync: %s", why)
            if self.store.reseed(self.state):
                log.error("the store had lost its data; this sidecar wrote its state back "
                          "(revision %s)", self.state.revision)
            fresh = self.store.load()
            with self._lock:
                self.state = fresh
                self.loaded = True
        self.last_heard = time.monotonic()

    def _apply_entries(self, entries: list[tuple[int, list[Op]]]) -> None:
        for revision, ops in entries:
            if revision > self.state.revision:  # a writer may have applied it already
                self.state.apply_all(ops, revision)

    def staleness_s(self) -> float:
        """Seconds since the store was last heard from; 0 for the embedded store, which every
        request reads (its state is never older than the request)."""
        return time.monotonic() - self.last_heard if self.synced else 0.0

    # -- decisions -------------------------------------------------------------------------
    def decide(self, request: AuthzRequest, at_least_revision: int | None = None, *,
               wait: bool = True, refresh: bool = True) -> dict[str, Any]:
        """One decision as the API's body. With at_least_revision, answer only from state at
        least that new: wait (bounded) for it, or with wait=False refuse at once. refresh=False
        skips the look at the embedded store (a batch looks once for all its checks)."""
        if not self.synced and refresh:
            try:
                self.refresh()
            except StoreError:
                log.warning("store unreadable; deciding from revision %s", self.state.revision)
        if at_least_revision is not None and self.state.revision < at_least_revision:
            if not (wait and self.wait_for_revision(at_least_revision)):
                raise ChatAuthzError(
                    f"This sidecar is at revision {self.state.revision}; revision {at_least_revision} was "
                    f"not reached: the store has not committed it, or could not be read within "
                    f"{self.revision_wait_s}s.", code="ERR_REVISION_NOT_REACHED", status=503)
        stale = self.staleness_s() if self.synced else 0.0
        engine = self.engine
        timed = self.on_decision is not None
        started = time.perf_counter() if timed else 0.0
        with self._lock:
            if not self.loaded:
                decision = self._refuse(engine, request, NOT_LOADED_CODE, "this sidecar has not loaded "
                                        "its state from the store yet; it denies until it has")
            elif self.max_staleness_s is not None and stale > self.max_staleness_s:
                decision = self._refuse(engine, request, STALE_CODE, f"this sidecar last heard from its "
                                        f"store {stale:.1f}s ago, more than the {self.max_staleness_s}s "
                                        "allowed (--max-staleness); it denies until it catches up")
            else:
                decision = engine.decide(request, self.state)
        body = self.decision_body(decision)
        if timed:
            self.on_decision(body, time.perf_counter() - started)  # type: ignore[misc]
        if self.synced:
            body["stalenessSeconds"] = round(stale, 3)
        if self.decision_log is not None:
            self.decision_log.record(request, body)
        return body

    def _refuse(self, engine: Engine, request: AuthzRequest, code: str, reason: str) -> Decision:
        """Fail closed: a valid request denied because the state cannot be trusted."""
        engine.validate(request)
        return Decision(False, reason, "store", self.state.users.get(request.uid, "default"), code,
                        None, self.state.revision, engine.policy.content_hash)

    def decision_body(self, decision: Decision) -> dict[str, Any]:
        body = decision.to_dict()
        body["decisionId"] = f"{self._id_prefix}-{next(self._ids)}"
        return body

    def wait_for_revision(self, revision: int) -> bool:
        """Catch up until the state reaches `revision`; reached? Caught up yet still behind, the
        store never committed `revision` (a write's revision is committed before it is answered):
        refused at once. Only an unreadable store is waited for, by at most revision_waiters
        requests at a time (each up to revision_wait_s); the rest are refused at once."""
        if not self.synced and not self.store.changed(revision - 1):
            return False  # the embedded store's counter (no query): nothing that new committed
        try:
            self.catch_up()
            return self.state.revision >= revision
        except StoreError:
            pass
        if not self._waiters.acquire(blocking=False):
            return False
        try:
            return self._retry_until(revision, time.monotonic() + self.revision_wait_s)
        finally:
            self._waiters.release()

    def _retry_until(self, revision: int, deadline: float) -> bool:
        while True:
            try:
                self.catch_up()
            except StoreError:
                pass  # keep trying until the deadline
            if self.state.revision >= revision:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)

    def read(self, view: Callable[[PolicySet, RuntimeState], Any]) -> Any:
        """Run a view function on caught-up state."""
        if not self.synced:
            self.refresh()
        with self._lock:
            return view(self.policy, self.state)

    # -- writes ----------------------------------------------------------------------------
    def write(self, plan: Callable[[PolicySet, RuntimeState], list[Op]], actor: str,
              view: Callable[[PolicySet, RuntimeState], Any] | None = None) -> tuple[int, Any]:
        """Check and change in one step. Returns the revision after the write and view(policy,
        state) taken at exactly that revision (no other change in between), for the response."""
        with self._write_lock, self._catch_up_lock:  # nothing else advances our state meanwhile
            policy = self.policy

            def planned() -> list[Op]:
                self._catch_up_locked()
                with self._lock:
                    return [with_before(self.state, op) for op in plan(policy, self.state)]
            try:
                revision, ops = self.store.write(planned, actor)
            except StoreError:
                self.store_errors += 1
                raise
            with self._lock:
                self._apply_entries([(revision, ops)] if ops else [])
                shown = view(policy, self.state) if view is not None else None
            self.last_heard = time.monotonic()
            return revision, shown
