"""Runtime-state stores behind one small interface (stores.base.Store).

Importing the package loads no driver: sidecar.stores.base (what the core and the sync thread
import) must not drag sqlite3 in. Import a store from its module (sidecar.stores.sqlite,
sidecar.stores.redisstore); `from sidecar.stores.sqlite import SQLiteStore` still works, lazily.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sidecar.stores.base import Store

if TYPE_CHECKING:
    from sidecar.stores.sqlite import SQLiteStore

__all__ = ["SQLiteStore", "Store"]


def __getattr__(name: str) -> Any:
    if name == "SQLiteStore":
        from sidecar.stores.sqlite import SQLiteStore
        return SQLiteStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
