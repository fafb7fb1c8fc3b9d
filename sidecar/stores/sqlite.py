"""The embedded store: one SQLite file (WAL, synchronous=FULL) shared by every worker on a host.

Tables hold the current state for a fast full load; the `journal` table holds every committed
write's ops under its revision, so workers catch up by replaying only what is new.
"""
from __future__ import annotations

import errno
import itertools
import json
import logging
import mmap
import os
import sqlite3
import struct
import threading
import time
from collections.abc import Callable
from operator import itemgetter
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import orjson

from sidecar.errors import StoreError
from sidecar.state import Op, RuntimeState, check_ops
from sidecar.stores.base import DataLoss, Facts, FactsRead, Plan, Row, Runs, runs_json, runs_of, store_changed

log = logging.getLogger("chatauthz.store")
T = TypeVar("T")
_U64 = struct.Struct("<Q")
BULK_CACHE_KIB = 64 * 1024  # a bulk-writing connection's page cache (SQLite allocates it as it fills)
BULK_CALL_OPS = 100_000  # ops an import commits in one transaction (several batches: revisions)
BACKSTOP_S = 0.25  # how often a reader also asks SQLite whether anything changed
REPLACED_CODE = "ERR_STORE_REPLACED"
PROBE_BYTES = 1 << 16  # a data folder that cannot take this much cannot take a write either
# Primary SQLite result codes that mean the disk or the file cannot take writes (not a busy lock).
DISK_ERRORS = {8: "SQLITE_READONLY: the file is read-only", 10: "SQLITE_IOERR: disk I/O error",
               11: "SQLITE_CORRUPT: the database is damaged", 13: "SQLITE_FULL: the database or disk is full",
               14: "SQLITE_CANTOPEN: the file cannot be opened", 26: "SQLITE_NOTADB: not a database"}

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
CREATE INDEX IF NOT EXISTS members_by_uid ON members (uid);
CREATE INDEX IF NOT EXISTS groups_by_owner ON groups (owner);
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

# The ops a bulk write applies a run at a time: (row of an op, the statements over such rows).
_OP_NAME = itemgetter("op")
BULK_SQL: dict[str, tuple[Callable[[Op], tuple[Any, ...]], tuple[str, ...]]] = {
    "put_user": (itemgetter("uid", "role"), ("INSERT OR REPLACE INTO users VALUES (?, ?)",)),
    "put_group": (itemgetter("guid", "owner"), ("INSERT OR REPLACE INTO groups VALUES (?, ?)",)),
    "put_member": (itemgetter("guid", "uid", "scope"), ("INSERT OR REPLACE INTO members VALUES (?, ?, ?)",)),
    "ban": (itemgetter("guid", "uid"), ("DELETE FROM members WHERE guid = ? AND uid = ?",
                                        "INSERT OR IGNORE INTO bans VALUES (?, ?)")),
}


class SQLiteStore:
    """Store on one SQLite file; one connection per thread.

    The files' identities (device, inode) are taken at open: a database deleted, replaced or
    moved away while we run is caught before any write commits (and by check(), for readiness);
    from then on every write is refused and no new connection is opened (it would open whatever
    now sits at the path); the open ones still read the original files.
    """

    def __init__(self, path: Path | str, busy_timeout_s: float = 10.0, expect: str | None = None) -> None:
        """With `expect` (a file_id from preflight) the file must still be that one: a worker
        started after it was deleted or replaced starts lost (it loads nothing, so it denies, and
        refuses writes) instead of serving a new, empty store."""
        self.path = str(path)
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._backstop_at = 0.0
        self._files: dict[str, tuple[int, int]] = {}
        self._lost: str | None = None
        self._anchor: sqlite3.Connection | None = None
        if expect is not None and _file_id_or_none(self.path) != expect:
            self._lose("is gone or is not the file this server started with (deleted, replaced or moved)")
            return
        try:
            old_umask = os.umask(0o077)  # the database and its WAL files: owner only
            try:
                self._local.conn = self._connect("rw" if expect else "rwc")
                self._beacon = RevisionBeacon(self.path + ".rev")
                self._local.data_version = self._local.conn.execute("PRAGMA data_version").fetchone()[0]
                self._local.conn.executescript(SCHEMA)
                # Held open for our lifetime, so SQLite never deletes and recreates the -wal
                # and -shm under us (it does when the last connection closes).
                self._anchor = self._connect("rw", check_same_thread=False)
                self._anchor.execute("SELECT 1 FROM meta").fetchall()
            finally:
                os.umask(old_umask)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open the embedded store {self.path}: {exc}") from exc
        for name in (self.path, self.path + "-wal", self.path + "-shm", self.path + ".rev"):
            if os.path.exists(name):
                stat = os.stat(name)
                self._files[name] = (stat.st_dev, stat.st_ino)
        if expect is not None and _file_id_or_none(self.path) != expect:  # replaced as we opened it
            self._lose("was replaced while this worker opened it")

    def _connect(self, mode: str, check_same_thread: bool = True) -> sqlite3.Connection:
        self._refuse_if_lost()
        conn = sqlite3.connect(f"file:{quote(self.path)}?mode={mode}", uri=True, timeout=self.busy_timeout_s,
                               isolation_level=None, check_same_thread=check_same_thread)
        if self._check_files() is not None:  # replaced as we opened it: touch nothing
            conn.close()
            self._refuse_if_lost()
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = self._connect("rw")  # never create a file where ours has gone
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open the embedded store {self.path}: {exc}") from exc
            self._local.conn = conn
            self._local.data_version = conn.execute("PRAGMA data_version").fetchone()[0]
        return conn

    def _check_files(self) -> str | None:
        """Why our files are no longer the ones at their paths (logged once), or None."""
        if self._lost is None:
            for name, identity in self._files.items():
                try:
                    stat = os.stat(name)
                    if (stat.st_dev, stat.st_ino) == identity:
                        continue
                    what = "replaced by another file"
                except OSError:
                    what = "deleted or moved away (or its folder renamed)"
                self._lose(f"was {what} while the sidecar ran", name)
                break
        return self._lost

    def _lose(self, what: str, name: str | None = None) -> None:
        self._lost = (f"the embedded store file {name or self.path} {what}; writes are refused and decisions "
                      "use the state in memory (a worker started since has none: it denies); put the file "
                      "back and restart")
        log.error("%s", self._lost)

    def _refuse_if_lost(self) -> None:
        if self._check_files() is not None:
            raise StoreError(f"The store cannot take writes: {self._lost}.", code=REPLACED_CODE)

    def check(self) -> str | None:
        """For readiness: raise StoreError if our files are gone; a warning while writes fail."""
        self._refuse_if_lost()
        code = self._beacon.failure()
        if code:
            return (f"writes to {self.path} are failing ({DISK_ERRORS.get(code, code)}); decisions still "
                    "serve; this clears when a write succeeds")
        return None

    def load(self) -> RuntimeState:
        return self._read(self._read_all)

    def _read_all(self, conn: sqlite3.Connection, entities: bool = True) -> RuntimeState:
        state = RuntimeState()
        state.revision, state.epoch = self._revision_epoch(conn)
        state.roles = {r: json.loads(rec) for r, rec in conn.execute("SELECT role, record FROM roles")}
        for role, key, value in conn.execute("SELECT role, key, value FROM role_permissions"):
            state.role_permissions.setdefault(role, {})[key] = json.loads(value)
        state.restricted = {r: frozenset(json.loads(f)) for r, f in conn.execute("SELECT * FROM restricted")}
        for guid, scope, key, value in conn.execute("SELECT guid, scope, key, value FROM overrides"):
            state.overrides.setdefault(guid, {}).setdefault(scope, {})[key] = json.loads(value)
        if not entities:
            return state
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
        return state

    # -- EntityReader: what a working set reads ----------------------------------------------
    def load_policy(self) -> RuntimeState:
        return self._read(lambda conn: self._read_all(conn, entities=False))

    def read_facts(self, facts: Facts) -> FactsRead:
        def read(conn: sqlite3.Connection) -> FactsRead:
            revision, epoch = self._revision_epoch(conn)
            roles = [_one(conn, "SELECT role FROM users WHERE uid = ?", (uid,)) for uid in facts.users]
            owners = [_one(conn, "SELECT owner FROM groups WHERE guid = ?", (guid,)) for guid in facts.groups]
            pairs = [(_one(conn, "SELECT scope FROM members WHERE guid = ? AND uid = ?", pair),
                      _one(conn, "SELECT 1 FROM bans WHERE guid = ? AND uid = ?", pair) is not None)
                     for pair in facts.memberships]
            return FactsRead(epoch, revision, roles, owners, pairs)
        return self._read(read)

    def members_of(self, guid: str) -> dict[str, str]:
        return self._read(lambda conn: dict(conn.execute("SELECT uid, scope FROM members WHERE guid = ?", (guid,))))

    def bans_of(self, guid: str) -> set[str]:
        return self._read(lambda conn: {u for (u,) in conn.execute("SELECT uid FROM bans WHERE guid = ?", (guid,))})

    def groups_of(self, uid: str) -> set[str]:
        return self._read(lambda conn: {g for (g,) in conn.execute(
            "SELECT guid FROM members WHERE uid = ? UNION SELECT guid FROM groups WHERE owner = ?", (uid, uid))})

    def group_ids(self) -> list[str]:
        return self._read(lambda conn: [g for (g,) in conn.execute("SELECT guid FROM groups ORDER BY guid")])

    def users_with_role(self, role: str) -> int:
        return int(self._read(lambda conn: conn.execute("SELECT COUNT(*) FROM users WHERE role = ?",
                                                        (role,)).fetchone()[0]))

    def _read(self, read: Callable[[sqlite3.Connection], T]) -> T:
        """read(conn) inside one read transaction (one revision): this thread's write
        transaction when a plan reads (it sees what the write sees)."""
        conn = self._conn()
        try:
            if conn.in_transaction:
                return read(conn)
            conn.execute("BEGIN")
            try:
                return read(conn)
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the embedded store {self.path}: {exc}") from exc

    @staticmethod
    def _revision_epoch(conn: sqlite3.Connection) -> tuple[int, str]:
        revision = conn.execute("SELECT value FROM meta WHERE key='revision'").fetchone()[0]
        return int(revision), str(conn.execute("SELECT value FROM meta WHERE key='epoch'").fetchone()[0])

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
        BACKSTOP_S it also asks SQLite itself, in case a writer died mid-way, and checks that our
        files are still there. Once they are not, only connections opened before (onto the
        original files) catch up: what others committed before the loss still arrives."""
        if self._lost is not None and getattr(self._local, "conn", None) is None:
            return False  # a new connection could only open whatever is at the path now
        if self._beacon.read() > revision:
            return True
        now = time.monotonic()
        if now < self._backstop_at:
            return False
        self._backstop_at = now + BACKSTOP_S  # for the process: any thread may take the turn
        self._check_files()
        version = self._conn().execute("PRAGMA data_version").fetchone()[0]
        if version == self._local.data_version:
            return False
        self._local.data_version = version
        return True

    def _begin_write(self) -> sqlite3.Connection:
        """This thread's connection, in an exclusive (BEGIN IMMEDIATE) transaction."""
        self._refuse_if_lost()
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._note_failure(exc)
            raise StoreError(f"the embedded store is busy or unavailable: {exc}") from exc
        return conn

    def write(self, plan: Plan, actor: str) -> tuple[int, list[Op]]:
        conn = self._begin_write()
        try:
            ops = check_ops(plan())  # the registry's shapes only: nothing else is persisted
            if not ops:
                conn.execute("ROLLBACK")
                revision = conn.execute("SELECT value FROM meta WHERE key='revision'").fetchone()[0]
                return revision, []
            for op in ops:
                _execute_op(conn, op)
            return self._commit(conn, actor, json.dumps(ops, separators=(",", ":"))), ops
        except BaseException as exc:
            self._failed(conn, exc)
            raise

    bulk_call_ops = BULK_CALL_OPS

    def write_batch(self, ops: list[Op], actor: str, expect_revision: int) -> int:
        """BulkWritable: ops of BULK_OPS only go in as write_runs; others one by one, each run of
        ops of one kind as one executemany per statement (the same rows as _execute_op one by
        one: a run's statements touch distinct tables, or are one), in one transaction with one
        journal row."""
        check_ops(ops)
        runs = runs_of(ops)
        if runs is not None:
            return (self.write_runs([runs], actor, expect_revision) or [expect_revision])[0]
        conn = self._begin_write_at(expect_revision)
        if conn is None:
            return expect_revision
        try:
            for name, run in itertools.groupby(ops, key=_OP_NAME):
                bulk = BULK_SQL.get(name)
                if bulk is None:
                    for op in run:
                        _execute_op(conn, op)
                    continue
                rows = list(map(bulk[0], run))
                for statement in bulk[1]:
                    conn.executemany(statement, rows)
            return self._commit(conn, actor, orjson.dumps(ops).decode())
        except BaseException as exc:
            self._failed(conn, exc)
            raise

    def write_runs(self, batches: list[Runs], actor: str, expect_revision: int,
                   journals: list[str] | None = None) -> list[int]:
        """BulkWritable: one transaction for all the batches (bulk_call_ops: an import's pages
        are written once for several batches, not once a batch), each batch a revision with its
        journal row; in a batch, users' and groups' rows (tables only their own ops touch) each
        in one executemany, then members' and bans' runs in order. The connection keeps a bigger
        page cache from its first bulk write on (BULK_CACHE_KIB: an import's indexes stay in
        memory)."""
        texts = journals if journals is not None else [runs_json(runs) for runs in batches]
        written = [(runs, text) for runs, text in zip(batches, texts, strict=True) if any(rows for _, rows in runs)]
        conn = self._begin_write_at(expect_revision, empty=not written)
        if conn is None:
            return []
        try:
            if not getattr(self._local, "bulk_cache", False):
                conn.execute(f"PRAGMA cache_size = -{BULK_CACHE_KIB}")
                self._local.bulk_cache = True
            revisions = []
            for runs, text in written:
                own: dict[str, list[Row]] = {"put_user": [], "put_group": []}
                ordered: Runs = []
                for name, rows in runs:
                    if name in own:
                        own[name] += rows
                    elif ordered and ordered[-1][0] == name:
                        ordered[-1][1].extend(rows)
                    else:
                        ordered.append((name, list(rows)))
                for name, rows in [*own.items(), *ordered]:
                    for statement in BULK_SQL[name][1]:
                        conn.executemany(statement, rows)
                revisions.append(self._journal_row(conn, actor, text))
            self._publish_and_commit(conn, revisions[-1])
            return revisions
        except BaseException as exc:
            self._failed(conn, exc)
            raise

    def _begin_write_at(self, expect_revision: int, empty: bool = False) -> sqlite3.Connection | None:
        """A write transaction on a store still at expect_revision (else ERR_STORE_CHANGED);
        None (and no transaction) when there is nothing to write."""
        conn = self._begin_write()
        try:
            revision = conn.execute("SELECT value FROM meta WHERE key='revision'").fetchone()[0]
            if revision != expect_revision:
                raise store_changed(revision, expect_revision)
        except BaseException as exc:
            self._failed(conn, exc)
            raise
        if empty:
            conn.execute("ROLLBACK")
            return None
        return conn

    def _commit(self, conn: sqlite3.Connection, actor: str, ops_json: str) -> int:
        """Inside the write's transaction, its ops applied: a new revision, its journal row, COMMIT."""
        revision = self._journal_row(conn, actor, ops_json)
        self._publish_and_commit(conn, revision)
        return revision

    @staticmethod
    def _journal_row(conn: sqlite3.Connection, actor: str, ops_json: str) -> int:
        """Inside a write's transaction: the next revision and its journal row."""
        conn.execute("UPDATE meta SET value = value + 1 WHERE key='revision'")
        revision: int = conn.execute("SELECT value FROM meta WHERE key='revision'").fetchone()[0]
        conn.execute("INSERT INTO journal VALUES (?, ?, ?, ?)", (revision, time.time(), actor, ops_json))
        return revision

    def _publish_and_commit(self, conn: sqlite3.Connection, revision: int) -> None:
        """The end of a write's transaction, up to `revision`: publish it and COMMIT."""
        self._refuse_if_lost()  # last look before COMMIT: never acknowledge into a dead file
        self._beacon.publish(revision)  # under the write lock, so it only ever grows
        conn.execute("COMMIT")
        self._beacon.set_failure(0)

    def _failed(self, conn: sqlite3.Connection, exc: BaseException) -> None:
        """A write raised: roll back; a SQLite error becomes a StoreError (the caller re-raises others)."""
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            self._note_failure(exc)
            raise StoreError(f"the write failed and changed nothing: {exc}") from exc

    def _note_failure(self, exc: sqlite3.Error) -> None:
        """A disk-level failure is shared with every worker (readiness says so) until a write succeeds."""
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # absent on errors sqlite3 raises itself
        if code in DISK_ERRORS:
            self._beacon.set_failure(code)
            log.error("a write to %s failed: %s", self.path, exc)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
        if self._anchor is not None:
            self._anchor.close()


def file_id(path: Path | str) -> str:
    stat = os.stat(path)
    return f"{stat.st_dev}:{stat.st_ino}"


def _file_id_or_none(path: str) -> str | None:
    try:
        return file_id(path)
    except OSError:
        return None


def preflight(folder: Path, database: Path | None) -> str | None:
    """Before serving: the data folder exists (made if missing) and takes a write, and the
    database (created if missing) opens, is a chatauthz store and passes PRAGMA quick_check.
    Returns the database's file_id; raises StoreError with a one-line reason."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        _probe_write(folder / f".write-probe-{os.getpid()}")
    except OSError as exc:
        why = {errno.EROFS: "is on a read-only file system", errno.ENOSPC: "is on a full disk",
               errno.EDQUOT: "is over its disk quota", errno.EACCES: "is not writable by this user",
               errno.EEXIST: "is not a folder", errno.ENOTDIR: "is not a folder"}
        raise StoreError(f"the data folder {folder} {why.get(exc.errno or 0, 'cannot be used')}: "
                         f"{exc.strerror or exc}") from exc
    if database is None:
        return None
    if not database.exists():
        leftovers = [p.name for p in (Path(f"{database}{x}") for x in ("-wal", "-shm", ".rev")) if p.exists()]
        if leftovers:
            raise StoreError(f"the database {database} is missing but its {', '.join(leftovers)} are here: it was "
                             "deleted or moved; put it back (or remove them to start empty)")
        SQLiteStore(database).close()
    try:
        conn = sqlite3.connect(f"file:{quote(str(database))}?mode=rw", uri=True, timeout=10.0)
        try:
            tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            problems = [" ".join(str(row[0]).split()) for row in conn.execute("PRAGMA quick_check(5)")]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise StoreError(f"the database {database} cannot be opened (damaged or not a database?): {exc}") from exc
    if problems != ["ok"]:
        raise StoreError(f"the database {database} is damaged (PRAGMA quick_check: {'; '.join(problems)}); "
                         "restore it from a backup or move it away")
    if tables and "meta" not in tables:
        raise StoreError(f"the database {database} is not a chatauthz store (tables: {', '.join(sorted(tables))})")
    return file_id(database)


def _probe_write(probe: Path) -> None:
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        data = memoryview(b"\0" * PROBE_BYTES)
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
    finally:
        os.close(fd)
        probe.unlink(missing_ok=True)


class RevisionBeacon:
    """The last committed revision as 8 bytes in a small file every worker maps into memory:
    a reader learns of other workers' commits without a query. Published before COMMIT (under
    SQLite's write lock, so it never goes back); a reader that sees it early just finds the
    journal not there yet and looks again on its next request. The next 8 bytes hold the SQLite
    error code of the last write if it failed at the disk (0 once one succeeds)."""

    SIZE = 16

    def __init__(self, path: str) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            size = os.fstat(fd).st_size
            if size < self.SIZE:
                os.pwrite(fd, b"\0" * (self.SIZE - size), size)
            self._map = mmap.mmap(fd, self.SIZE)
        finally:
            os.close(fd)

    def read(self) -> int:
        return _U64.unpack_from(self._map)[0]  # type: ignore[no-any-return]

    def publish(self, revision: int) -> None:
        _U64.pack_into(self._map, 0, revision)

    def failure(self) -> int:
        return _U64.unpack_from(self._map, 8)[0]  # type: ignore[no-any-return]

    def set_failure(self, code: int) -> None:
        if self.failure() != code:
            _U64.pack_into(self._map, 8, code)


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


def _one(conn: sqlite3.Connection, sql: str, params: tuple[str, ...]) -> Any:
    """The first column of the first row, None when there is none."""
    row = conn.execute(sql, params).fetchone()
    return row[0] if row is not None else None
