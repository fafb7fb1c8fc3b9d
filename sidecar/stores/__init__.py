"""Runtime-state stores behind one small interface (stores.base.Store)."""
from sidecar.stores.base import Store
from sidecar.stores.sqlite import SQLiteStore

__all__ = ["SQLiteStore", "Store"]
