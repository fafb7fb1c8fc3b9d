"""The store interface: persist ops atomically with one revision counter, and replay them."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from sidecar.state import Op, RuntimeState

Plan = Callable[[], list[Op]]


class Store(Protocol):
    def load(self) -> RuntimeState:
        """The whole runtime state at the current revision."""

    def changes_since(self, revision: int) -> list[tuple[int, list[Op]]]:
        """Committed writes after `revision`, oldest first, as (revision, ops)."""

    def journal(self, since: int, offset: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
        """The change log after `since`: (total, entries {revision, at, actor, ops})."""

    def changed(self) -> bool:
        """Cheap check: may another process have committed since this was last asked?"""

    def write(self, plan: Plan, actor: str) -> tuple[int, list[Op]]:
        """Run plan() inside one exclusive transaction and commit its ops with a new revision.

        plan may read (through changes_since) and raise to refuse; then nothing is written.
        Returns (revision, ops); with no ops nothing is written and the revision is unchanged.
        """

    def close(self) -> None: ...
