"""The embedded store: one SQLite file (WAL, synchronous=FULL) shared by every worker on a host.

Tables hold the current state for a fast full load; the `journal` table holds every committed
write's ops under its revision, so workers catch up by replaying only what is new.
"""
from __future__ import annotations

import json
import mmap
import os
import sqlite3
import struct
import threading
import time
from pathlib import Path
from typing import Any

from sidecar.errors import StoreError
from sidecar.state import Op, RuntimeState
from sidecar.stores.base import DataLoss, Plan

_U64 = struct.Struct("<Q")
BACKSTOP_S = 0.25  # how often a reader also asks SQLite whether anything changed

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('revision', 0);
INSERT OR IGNORE INTO meta VALUES ('epoch', 's' || lower(hex(randomblob(15))));
CREATE TABLE IF NOT EXISTS journal (revision INTEGER PRIMARY KEY, at REAL NOT NULL,
    actor TEXT NOT NULL, ops TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS roles (role TEXT PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS role_permissions (role TEXT, key TEXT, value TEXT, PRIMARY KEY (role, key));
CREATE TABLE IF NOT EXISTS restricted (role TEXT PRIMARY KEY, features TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (uid TEXT PRIMARY KEY, role TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS users_by_role ON users (role);
CREATE TABLE IF NOT EXISTS groups (guid TEXT PRIMARY KEY, owner TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS members (guid TEXT, uid TEXT, scope TEXT NOT NULL, PRIMARY KEY (guid, uid));
CREATE TABLE IF NOT EXISTS bans (guid TEXT, uid TEXT, PRIMARY KEY (guid, uid));
CREATE TABLE IF NOT EXISTS overrides (guid TEXT, scope TEXT, key TEXT, value TEXT,
    PRIMARY KEY (guid, scope, key));
"""

# Each op as SQL statements over its fields (named parameters).
OP_SQL: dict[str, list[str]] = {
    "put_role": ["INSERT OR REPLACE INTO roles VALUES (:role, :record_json)"],
    "delete_role": ["DELETE FROM roles WHERE role = :role",
                    "DELETE FROM role_permissions WHERE role = :role",
                    "DELETE FROM restricted WHERE role = :role",
                    "DELETE FROM users WHERE role = :role"],
    "unset_role_permission": ["DELETE FROM role_permissions WHERE role = :role AND key = :key"],
    "set_restricted_features": ["INSERT OR REPLACE INTO restricted VALUES (:role, :features_json)"],
    "put_user": ["INSERT OR REPLACE INTO users VALUES (:uid, :role)"],
    "delete_user": ["DELETE FROM users WHERE uid = :uid"],
    "put_group": ["INSERT OR REPLACE INTO groups VALUES (:guid, :owner)"],
    "delete_group": ["DELETE FROM groups WHERE guid = :guid", "DELETE FROM members WHERE guid = :guid",
                     "DELETE FROM bans WHERE guid = :guid", "DELETE FROM overrides WHERE guid = :guid"],
    "put_member": ["INSERT OR REPLACE INTO members VALUES (:guid, :uid, :scope)"],
    "delete_member": ["DELETE FROM members WHERE guid = :guid AND uid = :uid"],
    "ban": ["DELETE FROM members WHERE guid = :guid AND uid = :uid",
            "INSERT OR IGNORE INTO bans VALUES (:guid, :uid)"],
    "unban": ["DELETE FROM bans WHERE guid = :guid AND uid = :uid"],
    "unset_scope_permission": ["DELETE FROM overrides WHERE guid = :guid AND scope = :scope AND key = :key"],
}


class SQLiteStore:
    """Store on one SQLite file; one connection per thread."""

    def __init__(self, path: Path | str, busy_timeout_s: float = 10.0) -> None:
        self.path = str(path)
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._beacon = RevisionBeacon(self.path + ".rev")
        self._backstop_at = 0.0
        try:
            old_umask = os.umask(0o077)  # the database and its WAL files: owner only
            try:
                self._conn().executescript(SCHEMA)
                self._conn().execute("SELECT 1 FROM meta").fetchall()
            finally:
                os.umask(old_umask)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the embedded store {self.path}: {exc}") from exc

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None,
                                   check_same_thread=True)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            self._local.conn = conn
            self._local.data_version = conn.execute("PRAGMA data_version").fetchone()[0]
        return conn

    def load(self) -> RuntimeState:
        conn = self._conn()
        try:
            conn.execute("BEGIN")
            try:
                return self._read_all(conn)
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the embedded store {self.path}: {exc}") from exc

    def _read_all(self, conn: sqlite3.Connection) -> RuntimeState:
        state = RuntimeState()
        state.revision = conn.execute("SELECT value FROM meta WHERE key='revision'").fetchone()[0]
        state.epoch = str(conn.execute("SELECT value FROM meta WHERE key='epoch'").fetchone()[0])
        state.roles = {r: json.loads(rec) for r, rec in conn.execute("SELECT role, record FROM roles")}
        for role, key, value in conn.execute("SELECT role, key, value FROM role_permissions"):
            state.role_permissions.setdefault(role, {})[key] = json.loads(value)
        state.restricted = {r: frozenset(json.loads(f)) for r, f in conn.execute("SELECT * FROM restricted")}
        shared: dict[str, str] = {}  # one str object per role and scope name, not one per row
        state.users = {uid: shared.setdefault(role, role) for uid, role in conn.execute("SELECT uid, role FROM users")}
        state.owners = dict(conn.execute("SELECT guid, owner FROM groups"))
        group: dict[str, str] = {}
        last_guid = None
        for guid, uid, scope in conn.execute("SELECT guid, uid, scope FROM members ORDER BY guid"):
            if guid != last_guid:
                group = state.members.setdefault(guid, {})
                last_guid = guid
            group[uid] = shared.setdefault(scope, scope)
        for guid, uid in conn.execute("SELECT guid, uid FROM bans"):
            state.bans.setdefault(guid, set()).add(uid)
        for guid, scope, key, value in conn.execute("SELECT guid, scope, key, value FROM overrides"):
            state.overrides.setdefault(guid, {}).setdefault(scope, {})[key] = json.loads(value)
        return state

    def changes_since(self, revision: int) -> list[tuple[int, list[Op]]]:
        try:
            rows = self._conn().execute(
                "SELECT revision, ops FROM journal WHERE revision > ? ORDER BY revision", (revision,))
            return [(rev, json.loads(ops)) for rev, ops in rows]
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the embedded store journal: {exc}") from exc

    def journal(self, since: int, offset: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
        try:
            conn = self._conn()
            total = conn.execute("SELECT COUNT(*) FROM journal WHERE revision > ?", (since,)).fetchone()[0]
            rows = conn.execute("SELECT revision, at, actor, ops FROM journal WHERE revision > ? "
                                "ORDER BY revision LIMIT ? OFFSET ?", (since, limit, offset))
            return total, [{"revision": rev, "at": at, "actor": actor, "ops": json.loads(ops)}
                           for rev, at, actor, ops in rows]
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the embedded store journal: {exc}") from exc

    def recover(self, state: RuntimeState) -> DataLoss | None:
        return None  # the file is the only copy; its epoch is fixed when it is created

    def changed(self, revision: int) -> bool:
        """May a commit past `revision` exist? Reads the shared counter (nanoseconds); every
        BACKSTOP_S it also asks SQLite itself, in case a writer died mid-way."""
        if self._beacon.read() > revision:
            return True
        now = time.monotonic()
        if now < self._backstop_at:
            return False
        self._backstop_at = now + BACKSTOP_S  # for the process: any thread may take the turn
        version = self._conn().execute("PRAGMA data_version").fetchone()[0]
        if version == self._local.data_version:
            return False
        self._local.data_version = version
        return True

    def write(self, plan: Plan, actor: str) -> tuple[int, list[Op]]:
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"the embedded store is busy or unavailable: {exc}") from exc
        try:
            ops = plan()
            if not ops:
                conn.execute("ROLLBACK")
                revision = conn.execute("SELECT value FROM meta WHERE key='revision'").fetchone()[0]
                return revision, []
            for op in ops:
                _execute_op(conn, op)
            conn.execute("UPDATE meta SET value = value + 1 WHERE key='revision'")
            revision = conn.execute("SELECT value FROM meta WHERE key='revision'").fetchone()[0]
            conn.execute("INSERT INTO journal VALUES (?, ?, ?, ?)",
                         (revision, time.time(), actor, json.dumps(ops, separators=(",", ":"))))
            self._beacon.publish(revision)  # under the write lock, so it only ever grows
            conn.execute("COMMIT")
            return revision, ops
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"the write failed and changed nothing: {exc}") from exc
            raise

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


class RevisionBeacon:
    """The last committed revision as 8 bytes in a small file every worker maps into memory:
    a reader learns of other workers' commits without a query. Published before COMMIT (under
    SQLite's write lock, so it never goes back); a reader that sees it early just finds the
    journal not there yet and looks again on its next request."""

    def __init__(self, path: str) -> None:
        old_umask = os.umask(0o077)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        finally:
            os.umask(old_umask)
        try:
            if os.fstat(fd).st_size < 8:
                os.pwrite(fd, b"\0" * 8, 0)
            self._map = mmap.mmap(fd, 8)
        finally:
            os.close(fd)

    def read(self) -> int:
        return _U64.unpack_from(self._map)[0]  # type: ignore[no-any-return]

    def publish(self, revision: int) -> None:
        _U64.pack_into(self._map, 0, revision)


def _execute_op(conn: sqlite3.Connection, op: Op) -> None:
    name = op["op"]
    if name == "set_role_permissions":
        conn.executemany("INSERT OR REPLACE INTO role_permissions VALUES (?, ?, ?)",
                         [(op["role"], k, json.dumps(v)) for k, v in op["values"].items()])
        return
    if name == "set_scope_permissions":
        conn.executemany("INSERT OR REPLACE INTO overrides VALUES (?, ?, ?, ?)",
                         [(op["guid"], op["scope"], k, json.dumps(v)) for k, v in op["values"].items()])
        return
    params = dict(op)
    if "record" in op:
        params["record_json"] = json.dumps(op["record"])
    if "features" in op:
        params["features_json"] = json.dumps(sorted(op["features"]))
    for statement in OP_SQL[name]:
        conn.execute(statement, params)
