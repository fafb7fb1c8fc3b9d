"""The distributed store: runtime state in Redis, shared by every sidecar on every host.

Keys (all under a prefix, so several apps can share one Redis):
  rev        the revision counter            epoch     an id that changes if Redis loses its data
  journal    hash revision -> {at, actor, ops} (the last JOURNAL_KEEP writes)
  roles, roleperms, restricted, users, owners, members ("guid uid" -> scope), bans ("guid uid"),
  overrides (guid -> {scope: {key: value}})                                  all hashes
  channel    pub/sub: {"epoch", "revision"} after every write (a hint; the journal is the truth)
A write is WATCH rev -> catch up -> plan -> MULTI (ops, INCR rev, journal, PUBLISH) -> EXEC:
it commits only if nobody else wrote meanwhile (then it retries), and a failed write changes
nothing. This is the only module that talks to Redis for state; its errors become StoreError.
"""
from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis

from sidecar.errors import StoreError
from sidecar.state import Op, RuntimeState
from sidecar.stores.base import Plan, ResyncNeeded

JOURNAL_KEEP = 50_000
WRITE_RETRIES = 50
SCAN_COUNT = 10_000
SEP = " "  # ids are alpha-dash, so a space cannot occur inside one


class RedisStore:
    def __init__(self, url: str, prefix: str = "chatauthz:", timeout_s: float = 1.0) -> None:
        self.url = url
        self.prefix = prefix
        self.client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                           decode_responses=True, health_check_interval=5)
        self.channel = self.key("channel")
        self.epoch: str | None = None  # the epoch of the data this sidecar holds

    def key(self, name: str) -> str:
        return self.prefix + name

    # -- reads -----------------------------------------------------------------------------
    def current_epoch(self) -> str:
        """Redis's epoch, creating one if Redis is new or lost its data."""
        with _mapped("read the epoch"):
            self.client.set(self.key("epoch"), uuid.uuid4().hex, nx=True)
            return str(self.client.get(self.key("epoch")))

    def revision(self) -> int:
        with _mapped("read the revision"):
            return int(self.client.get(self.key("rev")) or 0)

    def load(self) -> RuntimeState:
        """Everything, without blocking Redis: scan, then replay what was written meanwhile."""
        with _mapped("load the runtime state"):
            epoch = self.current_epoch()
            start = self.revision()
            state = RuntimeState(revision=start)
            state.roles = {k: json.loads(v) for k, v in self._scan("roles")}
            state.role_permissions = {k: json.loads(v) for k, v in self._scan("roleperms")}
            state.restricted = {k: frozenset(json.loads(v)) for k, v in self._scan("restricted")}
            shared: dict[str, str] = {}  # one str object per role and scope name, not one per entry
            state.users = {uid: shared.setdefault(role, role) for uid, role in self._scan("users")}
            state.owners = dict(self._scan("owners"))
            for pair, scope in self._scan("members"):
                guid, uid = pair.split(SEP, 1)
                state.members.setdefault(guid, {})[uid] = shared.setdefault(scope, scope)
            for pair, _ in self._scan("bans"):
                guid, uid = pair.split(SEP, 1)
                state.bans.setdefault(guid, set()).add(uid)
            state.overrides = {k: json.loads(v) for k, v in self._scan("overrides")}
            self.epoch = epoch
            for revision, ops in self.changes_since(start):  # ops are idempotent: safe to replay
                state.apply_all(ops, revision)
            return state

    def _scan(self, name: str) -> list[tuple[str, str]]:
        return list(self.client.hscan_iter(self.key(name), count=SCAN_COUNT))

    def changes_since(self, revision: int) -> list[tuple[int, list[Op]]]:
        with _mapped("read the journal"):
            epoch = self.client.get(self.key("epoch"))
            current = self.revision()
            if epoch != self.epoch or current < revision:
                raise ResyncNeeded(f"Redis epoch or revision changed (revision {current}, ours {revision})")
            if current == revision:
                return []
            wanted = list(range(revision + 1, current + 1))
            entries = self.client.hmget(self.key("journal"), [str(r) for r in wanted])
            if any(entry is None for entry in entries):
                raise ResyncNeeded(f"the journal no longer holds revisions {revision + 1}..{current}")
            return [(rev, json.loads(entry)["ops"]) for rev, entry in zip(wanted, entries, strict=True)]

    def journal(self, since: int, offset: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
        with _mapped("read the journal"):
            current = self.revision()
            oldest = max(since + 1, current - JOURNAL_KEEP + 1, 1)
            revisions = list(range(oldest + offset, min(current, oldest + offset + limit - 1) + 1))
            entries = self.client.hmget(self.key("journal"), [str(r) for r in revisions]) if revisions else []
            found = [{"revision": r, **json.loads(e)} for r, e in zip(revisions, entries, strict=True) if e]
            return max(0, current - oldest + 1), found

    def reseed(self, state: RuntimeState) -> bool:
        """Redis lost its data (no revision key) while we hold some: write ours back.

        One sidecar wins (a short lock); it writes the whole state at its revision under a new
        epoch, so every other sidecar resyncs to it. Returns True if this call reseeded.
        """
        with _mapped("reseed"):
            if state.revision == 0 or self.client.exists(self.key("rev")):
                return False
            if not self.client.set(self.key("reseed-lock"), uuid.uuid4().hex, nx=True, ex=60):
                return False
            epoch = uuid.uuid4().hex
            with self.client.pipeline(transaction=True) as pipe:
                pipe.delete(*[self.key(t) for t in ("roles", "roleperms", "restricted", "users", "owners",
                                                    "members", "bans", "overrides", "journal")])
                _put_all(pipe, self.key, state)
                pipe.set(self.key("rev"), state.revision)
                pipe.set(self.key("epoch"), epoch)
                pipe.delete(self.key("reseed-lock"))
                pipe.publish(self.channel, json.dumps({"epoch": epoch, "revision": state.revision}))
                pipe.execute()
            return True

    def changed(self) -> bool:
        return False  # the sync thread applies changes; requests never wait on Redis

    # -- writes ----------------------------------------------------------------------------
    def write(self, plan: Plan, actor: str, state: RuntimeState) -> tuple[int, list[Op]]:
        with _mapped("write"):
            for _ in range(WRITE_RETRIES):
                with self.client.pipeline(transaction=True) as pipe:
                    try:
                        pipe.watch(self.key("rev"), self.key("epoch"))
                        ops = plan()  # catches up (through changes_since) and checks
                        current = int(pipe.get(self.key("rev")) or 0)
                        if not ops:
                            pipe.unwatch()
                            return current, []
                        revision = current + 1
                        pipe.multi()
                        for op in ops:
                            _apply(pipe, self.key, op, state)
                        pipe.set(self.key("rev"), revision)
                        entry = {"at": time.time(), "actor": actor, "ops": ops}
                        pipe.hset(self.key("journal"), str(revision), json.dumps(entry, separators=(",", ":")))
                        if revision > JOURNAL_KEEP:
                            pipe.hdel(self.key("journal"), str(revision - JOURNAL_KEEP))
                        pipe.publish(self.channel, json.dumps({"epoch": self.epoch, "revision": revision}))
                        pipe.execute()
                        return revision, ops
                    except redis.WatchError:
                        continue
            raise StoreError("too many concurrent writes; try again", status=503)

    def close(self) -> None:
        self.client.close()


def _apply(pipe: Any, key: Callable[[str], str], op: Op, state: RuntimeState) -> None:
    """Queue one op; `state` (caught up, before the write) expands ops that touch many fields."""
    name = op["op"]
    pair = f"{op.get('guid')}{SEP}{op.get('uid')}"
    if name == "put_role":
        pipe.hset(key("roles"), op["role"], json.dumps(op["record"]))
    elif name == "delete_role":
        for table in ("roles", "roleperms", "restricted"):
            pipe.hdel(key(table), op["role"])
        holders = [uid for uid, role in state.users.items() if role == op["role"]]
        for start in range(0, len(holders), 10_000):
            pipe.hdel(key("users"), *holders[start:start + 10_000])
    elif name in ("set_role_permissions", "unset_role_permission"):
        perms = dict(state.role_permissions.get(op["role"], {}))
        if name == "set_role_permissions":
            perms.update(op["values"])
        else:
            perms.pop(op["key"], None)
        _set_or_delete(pipe, key("roleperms"), op["role"], perms)
    elif name == "set_restricted_features":
        pipe.hset(key("restricted"), op["role"], json.dumps(sorted(op["features"])))
    elif name == "put_user":
        pipe.hset(key("users"), op["uid"], op["role"])
    elif name == "delete_user":
        pipe.hdel(key("users"), op["uid"])
    elif name == "put_group":
        pipe.hset(key("owners"), op["guid"], op["owner"])
    elif name == "delete_group":
        guid = op["guid"]
        pipe.hdel(key("owners"), guid)
        pipe.hdel(key("overrides"), guid)
        for table, uids in (("members", list(state.members.get(guid, {}))), ("bans", list(state.bans.get(guid, ())))):
            if uids:
                pipe.hdel(key(table), *[f"{guid}{SEP}{uid}" for uid in uids])
    elif name == "put_member":
        pipe.hset(key("members"), pair, op["scope"])
    elif name == "delete_member":
        pipe.hdel(key("members"), pair)
    elif name == "ban":
        pipe.hdel(key("members"), pair)
        pipe.hset(key("bans"), pair, "1")
    elif name == "unban":
        pipe.hdel(key("bans"), pair)
    elif name in ("set_scope_permissions", "unset_scope_permission"):
        scopes = json.loads(json.dumps(state.overrides.get(op["guid"], {})))
        values = scopes.setdefault(op["scope"], {})
        if name == "set_scope_permissions":
            values.update(op["values"])
        else:
            values.pop(op["key"], None)
        scopes = {scope: vals for scope, vals in scopes.items() if vals}
        _set_or_delete(pipe, key("overrides"), op["guid"], scopes)
    else:
        raise ValueError(f"unknown op {name!r}")


def _put_all(pipe: Any, key: Callable[[str], str], state: RuntimeState) -> None:
    tables: dict[str, dict[str, str]] = {
        "roles": {r: json.dumps(rec) for r, rec in state.roles.items()},
        "roleperms": {r: json.dumps(p) for r, p in state.role_permissions.items() if p},
        "restricted": {r: json.dumps(sorted(f)) for r, f in state.restricted.items()},
        "users": state.users, "owners": state.owners,
        "members": {f"{g}{SEP}{u}": s for g, ms in state.members.items() for u, s in ms.items()},
        "bans": {f"{g}{SEP}{u}": "1" for g, us in state.bans.items() for u in us},
        "overrides": {g: json.dumps(o) for g, o in state.overrides.items() if o}}
    for table, mapping in tables.items():
        items = list(mapping.items())
        for start in range(0, len(items), 10_000):
            pipe.hset(key(table), mapping=dict(items[start:start + 10_000]))


def _set_or_delete(pipe: Any, table: str, field: str, value: dict[str, Any]) -> None:
    if value:
        pipe.hset(table, field, json.dumps(value))
    else:
        pipe.hdel(table, field)


class _mapped:
    """Turns Redis errors into StoreError (503), keeping the cause."""

    def __init__(self, doing: str) -> None:
        self.doing = doing

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> bool:
        if isinstance(exc, redis.RedisError) and not isinstance(exc, redis.WatchError):
            raise StoreError(f"Redis is unavailable; could not {self.doing}: {exc}") from exc
        return False
