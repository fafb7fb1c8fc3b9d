"""The store interface: persist ops atomically with one revision counter, and replay them."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from sidecar.state import Op, RuntimeState

Plan = Callable[[], list[Op]]


class ResyncNeeded(Exception):
    """The journal cannot bring this reader up to date (gap, trimmed, or the store lost its data)."""


class Store(Protocol):
    def load(self) -> RuntimeState:
        """The whole runtime state at the current revision."""

    def changes_since(self, revision: int) -> list[tuple[int, list[Op]]]:
        """Committed writes after `revision`, oldest first, as (revision, ops)."""

    def journal(self, since: int, offset: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
        """The change log after `since`: (total, entries {revision, at, actor, ops})."""

    def reseed(self, state: RuntimeState) -> bool:
        """If the store lost its data, write `state` back and return True (else False)."""

    def changed(self, revision: int) -> bool:
        """Cheap check: may a commit past `revision` exist (made by another process)?"""

    def write(self, plan: Plan, actor: str) -> tuple[int, list[Op]]:
        """Run plan() inside one exclusive transaction and commit its ops with a new revision.

        plan may read (through changes_since) and raise to refuse; then nothing is written.
        Ops apply in order and each is absolute, so a store needs no reader's memory.
        Returns (revision, ops); with no ops nothing is written and the revision is unchanged.
        """

    def close(self) -> None: ...


@runtime_checkable
class SelfChecking(Protocol):
    """A store that can say whether it may be trusted (the embedded file: still ours? disk ok?)."""

    def check(self) -> str | None:
        """Raise StoreError when the store must not be used (readiness fails); return a warning
        when it serves but needs an operator (readiness "degraded"), else None."""
