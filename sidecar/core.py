"""The composition root: policy + store + engine + runtime state. Knows nothing of Flask.

Reads catch up with other workers' commits before deciding; writes run their plan inside the
store's exclusive transaction on caught-up state, then apply the committed ops locally.
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

from sidecar.engine import AuthzRequest, Decision, Engine
from sidecar.errors import ChatAuthzError, StoreError
from sidecar.policy import PolicySet
from sidecar.state import Op, RuntimeState, with_before
from sidecar.stores.base import Store

log = logging.getLogger("chatauthz.core")


class Sidecar:
    def __init__(self, policy: PolicySet, store: Store, *, revision_wait_s: float = 2.0) -> None:
        self.policy = policy
        self.engine = Engine(policy)
        self.store = store
        self.revision_wait_s = revision_wait_s
        self._lock = threading.RLock()
        self.state: RuntimeState = store.load()  # a store gone before the first load: no Sidecar
        self.store_error: str | None = None
        self._ids = itertools.count(1)
        self._id_prefix = f"{secrets.token_hex(4)}{os.getpid():x}"

    # -- reads -----------------------------------------------------------------------------
    def refresh(self) -> None:
        """Apply what other workers committed since our revision (cheap when nothing did)."""
        try:
            if not self.store.changed():
                self.store_error = None
                return
            with self._lock:
                for revision, ops in self.store.changes_since(self.state.revision):
                    self.state.apply_all(ops, revision)
            self.store_error = None
        except StoreError as exc:
            self.store_error = exc.message
            raise

    def decide(self, request: AuthzRequest, at_least_revision: int | None = None) -> dict[str, Any]:
        try:
            self.refresh()
        except StoreError:
            log.warning("store unreadable; deciding from revision %s", self.state.revision)
        if at_least_revision is not None and self.state.revision < at_least_revision:
            self._wait_for(at_least_revision)
        with self._lock:
            decision = self.engine.decide(request, self.state)
        return self.decision_body(decision)

    def decision_body(self, decision: Decision) -> dict[str, Any]:
        body = decision.to_dict()
        body["decisionId"] = f"{self._id_prefix}-{next(self._ids)}"
        return body

    def _wait_for(self, revision: int) -> None:
        deadline = time.monotonic() + self.revision_wait_s
        while self.state.revision < revision:
            if time.monotonic() >= deadline:
                raise ChatAuthzError(
                    f"This sidecar is at revision {self.state.revision}; revision {revision} was not "
                    f"reached within {self.revision_wait_s}s.", code="ERR_REVISION_NOT_REACHED", status=503)
            time.sleep(0.005)
            with self._lock:
                for rev, ops in self.store.changes_since(self.state.revision):
                    self.state.apply_all(ops, rev)

    def read(self, view: Callable[[PolicySet, RuntimeState], Any]) -> Any:
        """Run a view function on caught-up state."""
        self.refresh()
        with self._lock:
            return view(self.policy, self.state)

    # -- writes ----------------------------------------------------------------------------
    def write(self, plan: Callable[[PolicySet, RuntimeState], list[Op]], actor: str) -> int:
        """Check and change in one step; returns the revision after the write."""
        with self._lock:
            def planned() -> list[Op]:
                for rev, ops in self.store.changes_since(self.state.revision):
                    self.state.apply_all(ops, rev)
                return [with_before(self.state, op) for op in plan(self.policy, self.state)]
            revision, ops = self.store.write(planned, actor)
            if ops:
                self.state.apply_all(ops, revision)
            return revision
