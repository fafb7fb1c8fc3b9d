"""The distributed store: runtime state in Redis, shared by every sidecar on every host.

Keys, all under a prefix so that several apps can share one Redis:
  rev, epoch                 the revision counter; an id that changes if Redis loses its data
  epochs                     list of JSON {epoch, parent, fork, lost, at}: how each epoch began
  recovery, recovery-claims  while Redis lacks writes sidecars hold: a fence (writes refused)
                             and each such sidecar's claim (its revision); see recover()
  journal                    hash revision -> {at, actor, ops} (the last JOURNAL_KEEP writes)
  roles, restricted          hashes role -> JSON        roleperms:<role>   hash key -> JSON
  users                      hash uid -> role           roleusers:<role>   set of uids (index)
  owners                     hash guid -> owner         members:<guid>     hash uid -> scope
  bans:<guid>                set of uids                overrides:<guid>   hash "scope key" -> JSON
  channel                    pub/sub {"epoch", "revision"} after every write (a hint only)
Every op is an absolute command on one entity's keys (the few that must read first are Lua
scripts), so the ops of a write apply in order inside MULTI with no help from any sidecar's
memory. A write is WATCH rev -> catch up -> plan -> MULTI(ops, rev, journal, PUBLISH) -> EXEC;
it commits only if nobody wrote meanwhile (else it retries after a short random pause).
This is the only module that talks to Redis for state; its errors become StoreError.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import redis

from sidecar.errors import StoreError
from sidecar.state import POLICY_OPS, Op, RuntimeState, check_ops
from sidecar.stores.base import DataLoss, Facts, FactsRead, Follower, Plan, ResyncNeeded, store_changed

log = logging.getLogger("chatauthz.redis")
JOURNAL_KEEP = 50_000
LINEAGE_KEEP = 100
RECOVERY_TTL_S = 30  # fence and claims outlive a claimant's retries (seconds apart), not its death
WRITE_RETRIES = 30
BATCH = 500

# KEYS[1] users hash; ARGV: uid, role, roleusers key prefix
PUT_USER = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then redis.call('SREM', ARGV[3] .. old, ARGV[1]) end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', ARGV[3] .. ARGV[2], ARGV[1])
"""
# KEYS[1] users hash; ARGV: uid, roleusers key prefix
DELETE_USER = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  redis.call('SREM', ARGV[2] .. old, ARGV[1])
  redis.call('HDEL', KEYS[1], ARGV[1])
end
"""
# KEYS[1] users hash, KEYS[2] roleusers:<role>: the role's users go back to default
DELETE_ROLE_USERS = """
local uids = redis.call('SMEMBERS', KEYS[2])
for i = 1, #uids do redis.call('HDEL', KEYS[1], uids[i]) end
redis.call('DEL', KEYS[2])
return #uids
"""
# KEYS[1] the owners hash; ARGV: guid, new owner, owned-groups key prefix: the owner and its index
PUT_GROUP = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then redis.call('SREM', ARGV[3] .. old, ARGV[1]) end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', ARGV[3] .. ARGV[2], ARGV[1])
"""
# KEYS[1] the owners hash, KEYS[2] members:<guid>; ARGV: guid, owned prefix, user-groups prefix
DELETE_GROUP_INDEX = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then redis.call('SREM', ARGV[2] .. old, ARGV[1]) end
local uids = redis.call('HKEYS', KEYS[2])
for i = 1, #uids do redis.call('SREM', ARGV[3] .. uids[i], ARGV[1]) end
"""
# Only while Redis is still in the state the claimant found (else nil): set the fence if absent
# (with the first claim's time), refresh it and add our claim. KEYS: epoch, rev, recovery,
# recovery-claims; ARGV: found epoch ('' for none), found rev, claimant, our revision, ttl.
# Returns {now, fence, claims as a flat list}.
CLAIM = """
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] or tonumber(redis.call('GET', KEYS[2]) or '0') ~= tonumber(ARGV[2])
then return nil end
local t = redis.call('TIME')
local now = t[1] .. '.' .. string.format('%06d', t[2])
redis.call('SET', KEYS[3], now, 'NX', 'EX', ARGV[5])
redis.call('EXPIRE', KEYS[3], ARGV[5])
redis.call('HSET', KEYS[4], ARGV[3], ARGV[4] .. ' ' .. now)
redis.call('EXPIRE', KEYS[4], ARGV[5])
return {now, redis.call('GET', KEYS[3]), redis.call('HGETALL', KEYS[4])}
"""
# A bulk write's commands, run inside its MULTI by one call: ARGV[1] is a JSON list of commands
# [name, key, [arguments]] (one argument, not thousands for the client to encode one by one).
RUN_COMMANDS = """
local allowed = {HSET = true, HDEL = true, SADD = true, SREM = true}
local commands = cjson.decode(ARGV[1])
for _, command in ipairs(commands) do
  if not allowed[command[1]] then return redis.error_reply('not a bulk command: ' .. tostring(command[1])) end
  redis.call(command[1], command[2], unpack(command[3]))
end
return #commands
"""
BULK_OPS = frozenset({"put_user", "put_group", "put_member", "ban"})  # write_batch's net-effect path
BULK_ARGS = 1_000  # arguments per command in RUN_COMMANDS (Lua's unpack takes a few thousand)
BULK_CALL_ARGS = 200_000  # arguments per RUN_COMMANDS call


class RedisStore:
    def __init__(self, url: str, prefix: str = "chatauthz:", timeout_s: float = 1.0,
                 recovery_grace_s: float = 0.0, seen_dir: Path | None = None) -> None:
        self.url = url
        self.prefix = prefix
        self.client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                           decode_responses=True, health_check_interval=5)
        self.channel = self.key("channel")
        self.epoch: str | None = None  # the epoch of the data this sidecar holds
        self.lineage: list[dict[str, Any]] = []  # how that epoch came to be (Redis's `epochs`)
        self.recovery_grace_s = recovery_grace_s  # after a loss, how long claims are gathered
        self.claimant = uuid.uuid4().hex
        # The newest (epoch, revision) this sidecar has seen, kept on disk across its restarts: a
        # Redis found below it after a restart of both lost writes, though no state remembers them.
        name = hashlib.sha256(f"{url}|{prefix}".encode()).hexdigest()[:16]
        self.seen_file = seen_dir / f"redis-seen-{name}.json" if seen_dir is not None else None
        self.seen = self._read_seen()
        self._put_user = self.client.register_script(PUT_USER)
        self._delete_user = self.client.register_script(DELETE_USER)
        self._delete_role_users = self.client.register_script(DELETE_ROLE_USERS)
        self._claim_script = self.client.register_script(CLAIM)
        self._put_group = self.client.register_script(PUT_GROUP)
        self._delete_group_index = self.client.register_script(DELETE_GROUP_INDEX)
        self._run_commands = self.client.register_script(RUN_COMMANDS)

    def key(self, name: str) -> str:
        return self.prefix + name

    # Where each entity lives: the one place the layout of users, owners and groups is spelled.
    def user_field(self, uid: str) -> tuple[str, str]:
        """(hash key, field) holding uid's role."""
        return self.key("users"), uid

    def owner_field(self, guid: str) -> tuple[str, str]:
        """(hash key, field) holding guid's owner."""
        return self.key("owners"), guid

    def members_key(self, guid: str) -> str:
        """Hash uid -> scope of guid's members."""
        return self.key("members:" + guid)

    def bans_key(self, guid: str) -> str:
        """Set of the uids banned from guid."""
        return self.key("bans:" + guid)

    def overrides_key(self, guid: str) -> str:
        """Hash "scope key" -> JSON of guid's scope overrides."""
        return self.key("overrides:" + guid)

    def user_groups_key(self, uid: str) -> str:
        """Set of the groups uid is a member of (an index for list questions)."""
        return self.key("usergroups:" + uid)

    def owned_key(self, uid: str) -> str:
        """Set of the groups uid owns (an index)."""
        return self.key("owned:" + uid)

    # -- reads -----------------------------------------------------------------------------
    def revision(self) -> int:
        with _mapped("read the revision"):
            return int(self.client.get(self.key("rev")) or 0)

    def load(self) -> RuntimeState:
        """Everything, without blocking Redis: scan, then replay what was written meanwhile."""
        with _mapped("load the runtime state"):
            if self.client.set(self.key("epoch"), uuid.uuid4().hex, nx=True):  # a new or emptied Redis
                self.client.set(self.key("indexed"), 1)  # written from now on with its index sets
            epoch = str(self.client.get(self.key("epoch")) or "")
            lineage = [json.loads(step) for step in self.client.lrange(self.key("epochs"), 0, -1)]
            start = self.revision()
            state = RuntimeState(revision=start, epoch=epoch)
            shared: dict[str, str] = {}  # one str object per role and scope name, not one per entry
            state.roles = {r: json.loads(v) for r, v in self._hscan("roles")}
            state.restricted = {r: frozenset(json.loads(v)) for r, v in self._hscan("restricted")}
            state.users = {uid: shared.setdefault(role, role) for uid, role in self._hscan("users")}
            state.owners = dict(self._hscan("owners"))
            for role, perms in self._per_entity("roleperms:", "hgetall"):
                state.role_permissions[role] = {k: json.loads(v) for k, v in perms.items()}
            for guid, members in self._per_entity("members:", "hgetall"):
                state.members[guid] = {uid: shared.setdefault(s, s) for uid, s in members.items()}
            for guid, banned in self._per_entity("bans:", "smembers"):
                state.bans[guid] = set(banned)
            for guid, values in self._per_entity("overrides:", "hgetall"):
                scopes: dict[str, dict[str, Any]] = {}
                for field, value in values.items():
                    scope, key = field.split(" ", 1)
                    scopes.setdefault(scope, {})[key] = json.loads(value)
                state.overrides[guid] = scopes
            self.epoch, self.lineage = epoch, lineage
            for revision, ops in self.changes_since(start, remembered=False):  # idempotent: safe to replay
                state.apply_all(ops, revision)
            self._saw(epoch, state.revision)
            return state

    def _hscan(self, name: str) -> Iterator[tuple[str, str]]:
        return self.client.hscan_iter(self.key(name), count=10_000)

    def _per_entity(self, kind: str, command: str) -> Iterator[tuple[str, Any]]:
        """(entity id, value) for every key prefix+kind+<id>, fetched in pipelined batches."""
        keys = list(self.client.scan_iter(match=self.key(kind) + "*", count=10_000))
        for start in range(0, len(keys), BATCH):
            batch = keys[start:start + BATCH]
            with self.client.pipeline(transaction=False) as pipe:
                for key in batch:
                    getattr(pipe, command)(key)
                values = pipe.execute()
            for key, value in zip(batch, values, strict=True):
                if value:
                    yield key[len(self.key(kind)):], value

    # -- EntityReader: what a working set reads ----------------------------------------------
    def load_policy(self) -> RuntimeState:
        """The policy part (roles, permissions, restricted features, overrides) through the
        index sets: no scan of the keyspace, so it costs the same at any data size."""
        with _mapped("load the policy part of the state"):
            self._ensure_indexes()
            with self.client.pipeline(transaction=True) as pipe:
                pipe.get(self.key("epoch"))
                pipe.get(self.key("rev"))
                pipe.hgetall(self.key("roles"))
                pipe.hgetall(self.key("restricted"))
                pipe.smembers(self.key("index:roleperms"))
                pipe.smembers(self.key("index:overrides"))
                epoch, rev, roles, restricted, perm_roles, override_groups = pipe.execute()
            state = RuntimeState(revision=int(rev or 0), epoch=str(epoch or ""))
            state.roles = {r: json.loads(v) for r, v in roles.items()}
            state.restricted = {r: frozenset(json.loads(v)) for r, v in restricted.items()}
            perm_roles, override_groups = sorted(perm_roles), sorted(override_groups)
            with self.client.pipeline(transaction=True) as pipe:
                pipe.get(self.key("rev"))
                for role in perm_roles:
                    pipe.hgetall(self.key("roleperms:" + role))
                for guid in override_groups:
                    pipe.hgetall(self.overrides_key(guid))
                now, *values = pipe.execute()
            for role, perms in zip(perm_roles, values, strict=False):
                if perms:
                    state.role_permissions[role] = {k: json.loads(v) for k, v in perms.items()}
            for guid, fields in zip(override_groups, values[len(perm_roles):], strict=True):
                scopes: dict[str, dict[str, Any]] = {}
                for field, value in fields.items():
                    scope, name = field.split(" ", 1)
                    scopes.setdefault(scope, {})[name] = json.loads(value)
                if scopes:
                    state.overrides[guid] = scopes
            self.epoch = state.epoch
            if int(now or 0) != state.revision:  # written meanwhile: replay (ops are absolute)
                for revision, ops in self.changes_since(state.revision, remembered=False):
                    for op in ops:
                        if op["op"] in POLICY_OPS:
                            state.apply(op)
                    state.revision = revision
            self.lineage = [json.loads(step) for step in self.client.lrange(self.key("epochs"), 0, -1)]
            self._saw(self.epoch, state.revision)
            return state

    def _ensure_indexes(self) -> None:
        """Data written before the index sets existed: build them once (a scan)."""
        if self.client.set(self.key("epoch"), uuid.uuid4().hex, nx=True):  # a new or emptied Redis
            self.client.set(self.key("indexed"), 1)
        if self.client.exists(self.key("indexed")):
            return
        log.warning("building the Redis index sets once (data from an older version)")
        state = self.load()
        with self.client.pipeline(transaction=False) as pipe:
            for name, members in _indexes(self, state.role_permissions, state.overrides, state.owners,
                                          state.members).items():
                for start in range(0, len(members), 10_000):
                    pipe.sadd(name, *members[start:start + 10_000])
            pipe.set(self.key("indexed"), 1)
            pipe.execute()

    def read_facts(self, facts: Facts) -> FactsRead:
        with _mapped("read the facts of a request"):
            with self.client.pipeline(transaction=True) as pipe:  # one round trip, one revision
                pipe.get(self.key("epoch"))
                pipe.get(self.key("rev"))
                for uid in facts.users:
                    pipe.hget(*self.user_field(uid))
                for guid in facts.groups:
                    pipe.hget(*self.owner_field(guid))
                for guid, uid in facts.memberships:
                    pipe.hget(self.members_key(guid), uid)
                    pipe.sismember(self.bans_key(guid), uid)
                epoch, rev, *values = pipe.execute()
            users, groups = len(facts.users), len(facts.groups)
            pairs = values[users + groups:]
            return FactsRead(str(epoch or ""), int(rev or 0), values[:users], values[users:users + groups],
                             [(pairs[i], bool(pairs[i + 1])) for i in range(0, len(pairs), 2)])

    def members_of(self, guid: str) -> dict[str, str]:
        with _mapped("read a group's members"):
            return {str(uid): str(scope) for uid, scope in self.client.hgetall(self.members_key(guid)).items()}

    def bans_of(self, guid: str) -> set[str]:
        with _mapped("read a group's bans"):
            return {str(uid) for uid in self.client.smembers(self.bans_key(guid))}

    def groups_of(self, uid: str) -> set[str]:
        with _mapped("read a user's groups"):
            return {str(guid) for guid in self.client.sunion([self.user_groups_key(uid), self.owned_key(uid)])}

    def group_ids(self) -> list[str]:
        with _mapped("list the groups"):
            key, _ = self.owner_field("")  # the one owners hash (a bucketed layout: every bucket)
            return sorted(str(guid) for guid in self.client.hkeys(key))

    def users_with_role(self, role: str) -> int:
        with _mapped("count a role's users"):
            return int(self.client.scard(self.key("roleusers:" + role)))

    def changes_since(self, revision: int, *, remembered: bool = True) -> list[tuple[int, list[Op]]]:
        with _mapped("read the journal"):
            epoch = self.client.get(self.key("epoch"))
            current = self.revision()
            if epoch != self.epoch or current < revision:
                raise ResyncNeeded(f"Redis epoch or revision changed (revision {current}, ours {revision})")
            if remembered and self.seen is not None and self.seen[0] == epoch and current < self.seen[1]:
                raise ResyncNeeded(f"Redis is at revision {current}, below the {self.seen[1]} this sidecar "
                                   "saw before it restarted")
            self._saw(self.epoch, current)  # the caller applies everything up to current
            if current == revision:
                return []
            wanted = list(range(revision + 1, current + 1))
            entries = self.client.hmget(self.key("journal"), [str(r) for r in wanted])
            if any(entry is None for entry in entries):
                raise ResyncNeeded(f"the journal no longer holds revisions {revision + 1}..{current}")
            return [(rev, json.loads(str(entry))["ops"]) for rev, entry in zip(wanted, entries, strict=True)]

    def journal(self, since: int, offset: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
        with _mapped("read the journal"):
            current = self.revision()
            oldest = max(since + 1, current - JOURNAL_KEEP + 1, 1)
            revisions = list(range(oldest + offset, min(current, oldest + offset + limit - 1) + 1))
            entries = self.client.hmget(self.key("journal"), [str(r) for r in revisions]) if revisions else []
            found = [{"revision": r, **json.loads(e)} for r, e in zip(revisions, entries, strict=True) if e]
            return max(0, current - oldest + 1), found

    def follow(self, catch_up: Callable[[], None], interval_s: float) -> Follower:
        """Subscribable: pub/sub hints plus a periodic check (sidecar.sync.RedisSync)."""
        from sidecar.sync import RedisSync
        return RedisSync(self.client, self.channel, catch_up, interval_s=interval_s)

    # -- writes ----------------------------------------------------------------------------
    def write(self, plan: Plan, actor: str) -> tuple[int, list[Op]]:
        with _mapped("write"):
            for attempt in range(WRITE_RETRIES):
                with self.client.pipeline(transaction=True) as pipe:
                    try:
                        pipe.watch(self.key("rev"), self.key("epoch"), self.key("recovery"))  # type: ignore[no-untyped-call]
                        ops = check_ops(plan())  # catches up (changes_since), checks; registry shapes only
                        raw, fenced = pipe.mget(self.key("rev"), self.key("recovery"))
                        if fenced:
                            raise StoreError("Redis lost writes that sidecars hold and they are writing them "
                                             "back; try again in a few seconds")
                        current = int(raw or 0)
                        if not ops:
                            pipe.unwatch()
                            return current, []
                        revision = current + 1
                        pipe.multi()
                        for op in ops:
                            self._queue(pipe, op)
                        self._commit(pipe, revision, actor, ops)
                        pipe.execute()
                        self._saw(self.epoch, revision)
                        return revision, ops
                    except redis.WatchError:
                        time.sleep(random.uniform(0, min(0.05, 0.001 * 2 ** attempt)))
            raise StoreError("too many concurrent writes; try again", status=503)

    def _commit(self, pipe: Any, revision: int, actor: str, ops: list[Op]) -> None:
        pipe.set(self.key("rev"), revision)
        entry = {"at": time.time(), "actor": actor, "ops": ops}
        pipe.hset(self.key("journal"), str(revision), json.dumps(entry, separators=(",", ":")))
        if revision > JOURNAL_KEEP:
            pipe.hdel(self.key("journal"), str(revision - JOURNAL_KEEP))
        pipe.publish(self.channel, json.dumps({"epoch": self.epoch, "revision": revision}))

    def _queue(self, pipe: Any, op: Op) -> None:
        """Queue one op as absolute commands on its entity's keys."""
        key, name = self.key, op["op"]
        if name == "put_role":
            pipe.hset(key("roles"), op["role"], json.dumps(op["record"]))
        elif name == "delete_role":
            pipe.hdel(key("roles"), op["role"])
            pipe.hdel(key("restricted"), op["role"])
            pipe.delete(key("roleperms:" + op["role"]))
            pipe.srem(key("index:roleperms"), op["role"])
            self._delete_role_users(keys=[key("users"), key("roleusers:" + op["role"])], client=pipe)
        elif name == "set_role_permissions":
            pipe.hset(key("roleperms:" + op["role"]), mapping={k: json.dumps(v) for k, v in op["values"].items()})
            pipe.sadd(key("index:roleperms"), op["role"])
        elif name == "unset_role_permission":
            pipe.hdel(key("roleperms:" + op["role"]), op["key"])
        elif name == "set_restricted_features":
            pipe.hset(key("restricted"), op["role"], json.dumps(sorted(op["features"])))
        elif name == "put_user":
            users, uid = self.user_field(op["uid"])
            self._put_user(keys=[users], args=[uid, op["role"], key("roleusers:")], client=pipe)
        elif name == "delete_user":
            users, uid = self.user_field(op["uid"])
            self._delete_user(keys=[users], args=[uid, key("roleusers:")], client=pipe)
        elif name == "put_group":
            owners, guid = self.owner_field(op["guid"])
            self._put_group(keys=[owners], args=[guid, op["owner"], key("owned:")], client=pipe)
        elif name == "delete_group":
            guid = op["guid"]
            owners, field = self.owner_field(guid)
            self._delete_group_index(keys=[owners, self.members_key(guid)],
                                     args=[field, key("owned:"), key("usergroups:")], client=pipe)
            pipe.hdel(owners, field)
            pipe.delete(self.members_key(guid), self.bans_key(guid), self.overrides_key(guid))
            pipe.srem(key("index:overrides"), guid)
        elif name == "put_member":
            pipe.hset(self.members_key(op["guid"]), op["uid"], op["scope"])
            pipe.sadd(self.user_groups_key(op["uid"]), op["guid"])
        elif name == "delete_member":
            pipe.hdel(self.members_key(op["guid"]), op["uid"])
            pipe.srem(self.user_groups_key(op["uid"]), op["guid"])
        elif name == "ban":
            pipe.hdel(self.members_key(op["guid"]), op["uid"])
            pipe.srem(self.user_groups_key(op["uid"]), op["guid"])
            pipe.sadd(self.bans_key(op["guid"]), op["uid"])
        elif name == "unban":
            pipe.srem(self.bans_key(op["guid"]), op["uid"])
        elif name == "set_scope_permissions":
            values = {f"{op['scope']} {k}": json.dumps(v) for k, v in op["values"].items()}
            pipe.hset(self.overrides_key(op["guid"]), mapping=values)
            pipe.sadd(key("index:overrides"), op["guid"])
        elif name == "unset_scope_permission":
            pipe.hdel(self.overrides_key(op["guid"]), f"{op['scope']} {op['key']}")
        else:
            raise ValueError(f"unknown op {name!r}")

    # -- bulk writes (chatauthz import) -----------------------------------------------------
    def write_batch(self, ops: list[Op], actor: str, expect_revision: int) -> int:
        """BulkWritable. Ops of the kinds an import writes (BULK_OPS) go in as their net effect:
        each hash field's last value (HSET, or HDEL for a member a later ban removed), grouped by
        key, and the bans (SADD), run by RUN_COMMANDS; roleusers:<role> moves each user from the
        role it has now (read under WATCH) to its last. Other ops are queued one by one (_queue).
        Then _commit (revision, journal, publish), all in one MULTI; a write by anyone else since
        expect_revision (found, or breaking the WATCH) is ERR_STORE_CHANGED."""
        check_ops(ops)
        with _mapped("write"), self.client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(self.key("rev"), self.key("epoch"), self.key("recovery"))  # type: ignore[no-untyped-call]
                raw, fenced = pipe.mget(self.key("rev"), self.key("recovery"))
                if fenced:
                    raise StoreError("Redis lost writes that sidecars hold and they are writing them back; "
                                     "try again in a few seconds")
                current = int(raw or 0)
                if current != expect_revision:
                    raise store_changed(current, expect_revision)
                if not ops:
                    pipe.unwatch()
                    return current
                bulk = all(op["op"] in BULK_OPS for op in ops)
                calls = self._bulk_commands(pipe, ops) if bulk else []
                revision = current + 1
                pipe.multi()
                for commands in calls:
                    self._run_commands(keys=[], args=[orjson.dumps(commands)], client=pipe)
                if not bulk:
                    for op in ops:
                        self._queue(pipe, op)
                self._commit(pipe, revision, actor, ops)
                pipe.execute()
            except redis.WatchError:
                raise store_changed(None, expect_revision) from None
        self._saw(self.epoch, revision)
        return revision

    def _bulk_commands(self, pipe: Any, ops: list[Op]) -> list[list[tuple[str, str, list[str]]]]:
        """The RUN_COMMANDS calls that leave Redis as applying ops in order would (reads the
        users' current roles through pipe, under its WATCH)."""
        users: dict[tuple[str, str], str] = {}
        owners: dict[tuple[str, str], str] = {}
        members: dict[tuple[str, str], str | None] = {}  # (members key, uid) -> scope; None: removed
        bans: dict[str, list[str]] = {}
        member_keys: dict[str, str] = {}
        for op in ops:
            name = op["op"]
            if name == "put_member" or name == "ban":
                guid = op["guid"]
                key = member_keys.get(guid)
                if key is None:
                    key = member_keys[guid] = self.members_key(guid)
                if name == "put_member":
                    members[key, op["uid"]] = op["scope"]
                else:
                    members[key, op["uid"]] = None
                    bans.setdefault(self.bans_key(guid), []).append(op["uid"])
            elif name == "put_user":
                users[self.user_field(op["uid"])] = op["role"]
            else:
                owners[self.owner_field(op["guid"])] = op["owner"]
        hset: dict[str, list[str]] = {}
        hdel: dict[str, list[str]] = {}
        for table in (users, owners):
            for (key, field), value in table.items():
                hset.setdefault(key, []).extend((field, value))
        sadd: dict[str, list[str]] = bans
        srem: dict[str, list[str]] = {}
        guid_of = {key: guid for guid, key in member_keys.items()}
        for (key, uid), scope in members.items():  # and the index of a user's groups
            if scope is None:
                hdel.setdefault(key, []).append(uid)
                srem.setdefault(self.user_groups_key(uid), []).append(guid_of[key])
            else:
                hset.setdefault(key, []).extend((uid, scope))
                sadd.setdefault(self.user_groups_key(uid), []).append(guid_of[key])
        if owners:  # owned:<uid>, as PUT_GROUP keeps it: out of the owner it had, into its last
            by_owner_key: dict[str, list[str]] = {}
            for key, field in owners:
                by_owner_key.setdefault(key, []).append(field)
            for key, guids in by_owner_key.items():
                for field, before in zip(guids, pipe.hmget(key, guids), strict=True):
                    owner = owners[key, field]
                    if before is not None and before != owner:
                        srem.setdefault(self.owned_key(before), []).append(field)
                    sadd.setdefault(self.owned_key(owner), []).append(field)
        if users:  # roleusers:<role>, as PUT_USER keeps it: out of the role it had, into its last
            by_key: dict[str, list[str]] = {}
            for key, field in users:
                by_key.setdefault(key, []).append(field)
            for key, uids in by_key.items():
                for field, before in zip(uids, pipe.hmget(key, uids), strict=True):
                    role = users[key, field]
                    if before is not None and before != role:
                        srem.setdefault(self.key("roleusers:" + before), []).append(field)
                    sadd.setdefault(self.key("roleusers:" + role), []).append(field)
        calls: list[list[tuple[str, str, list[str]]]] = [[]]
        in_call = 0
        for command, per_key, step in (("HDEL", hdel, 1), ("SREM", srem, 1), ("HSET", hset, 2), ("SADD", sadd, 1)):
            for key, args in per_key.items():
                size = BULK_ARGS - BULK_ARGS % step
                for start in range(0, len(args), size):
                    chunk = args[start:start + size]
                    if in_call + len(chunk) > BULK_CALL_ARGS:
                        calls.append([])
                        in_call = 0
                    calls[-1].append((command, key, chunk))
                    in_call += len(chunk) + 2
        return [call for call in calls if call]

    # -- recovery --------------------------------------------------------------------------
    def reseed(self, state: RuntimeState) -> bool:
        """Write `state` back if Redis lacks its history (see recover); True if this call did."""
        loss = self.recover(state)
        return loss is not None and loss.status == "written"

    def recover(self, state: RuntimeState) -> DataLoss | None:
        """Does Redis still hold `state`'s history? None if so; else what it lost.

        Redis lost writes when it is in our epoch below our revision (an older snapshot, a
        lagging replica), or in an epoch that does not descend from ours (emptied, or another
        history). Then every sidecar that notices fences writes off and claims with its revision;
        once recovery_grace_s has passed since the first claim, the highest claim writes its whole
        state back at its revision under a new epoch, so no revision number is issued twice
        within an epoch. The others find the new epoch descending from theirs and follow.
        """
        if state.revision == 0:
            return None  # nothing to lose
        with _mapped("check Redis for lost writes"):
            with self.client.pipeline(transaction=False) as pipe:
                pipe.get(self.key("epoch"))
                pipe.get(self.key("rev"))
                pipe.lrange(self.key("epochs"), 0, -1)
                epoch, raw_rev, raw_lineage = pipe.execute()
            revision = int(raw_rev or 0)
            if epoch == state.epoch:
                seen = max(state.revision, self.seen[1] if self.seen and self.seen[0] == epoch else 0)
                if revision >= seen:
                    return None  # a gap or a trimmed journal: a plain resync
                loss = DataLoss(state.epoch, revision + 1, seen, "pending",
                                detail=f"Redis is back at revision {revision} of the same epoch (an older "
                                       "snapshot, or a failover to a replica that lagged)")
                return self._claim(state, loss, epoch, revision)
            steps = {step["epoch"]: step for step in map(json.loads, raw_lineage)}
            current, step = epoch, None
            for _ in range(len(steps)):  # walk back from Redis's epoch towards ours
                if current == state.epoch or current not in steps:
                    break
                step = steps[current]
                current = step["parent"]
            if current == state.epoch and step is not None:  # restored by someone: follow
                first, last = step["lost"]
                return DataLoss(state.epoch, first, max(last, state.revision), "followed", epoch, step["fork"],
                                f"another sidecar wrote revisions up to {step['fork']} back as epoch {epoch}")
            other = f"Redis holds another history (epoch {epoch or 'none'}, revision {revision})"
            if revision >= state.revision:  # as long as ours: overwriting it would lose its writes
                return DataLoss(state.epoch, 1, state.revision, "followed", epoch, 0,
                                f"{other}; this sidecar follows it, and its own writes are not in it")
            loss = DataLoss(state.epoch, revision + 1, state.revision, "pending",
                            detail=f"{other}: emptied, or restored from before our epoch began")
            return self._claim(state, loss, epoch, revision)

    def _claim(self, state: RuntimeState, loss: DataLoss, epoch: str | None, revision: int) -> DataLoss:
        """Fence writes and claim; the highest claim past the grace period writes back."""
        keys = [self.key("epoch"), self.key("rev"), self.key("recovery"), self.key("recovery-claims")]
        claimed = state.revision if state.whole else 0  # a working set has nothing to write back
        found = self._claim_script(keys=keys, args=[epoch or "", revision, self.claimant, claimed,
                                                    RECOVERY_TTL_S])
        if found is None:  # Redis moved since we looked (say, another sidecar wrote back): look again
            return replace(loss, detail=f"{loss.detail}; Redis changed meanwhile, looking again")
        now, since, flat = float(found[0]), float(found[1]), found[2]
        waited = now - since
        live = [(int(rev), who) for who, value in zip(flat[::2], flat[1::2], strict=True)
                for rev, at in [value.split()] if now - float(at) <= RECOVERY_TTL_S]
        best = max(live, default=(claimed, self.claimant))
        if waited < self.recovery_grace_s:
            return replace(loss, detail=f"{loss.detail}; gathering claims for "
                                        f"{self.recovery_grace_s - waited:.1f}s more before writing back")
        if best != (claimed, self.claimant):
            return replace(loss, detail=f"{loss.detail}; a sidecar at revision {best[0]} writes its state back")
        return self._write_back(state, loss, epoch, revision)

    def _write_back(self, state: RuntimeState, loss: DataLoss, epoch: str | None, revision: int) -> DataLoss:
        """Our whole state, at our revision, under a new epoch, if Redis has not moved meanwhile.
        A working set (no whole state, and no sidecar that has one claimed) starts the new epoch
        on what Redis holds, so that no revision number is issued twice within an epoch."""
        new = uuid.uuid4().hex
        fork = state.revision if state.whole else revision
        step = {"epoch": new, "parent": state.epoch, "fork": fork, "lost": [loss.first, loss.last],
                "at": time.time()}
        lineage = [*self.lineage, step][-LINEAGE_KEEP:]
        with self.client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(self.key("rev"), self.key("epoch"))  # type: ignore[no-untyped-call]
                if pipe.get(self.key("epoch")) != epoch or int(pipe.get(self.key("rev")) or 0) != revision:
                    return replace(loss, detail=f"{loss.detail}; Redis changed meanwhile, looking again")
                stale = list(self.client.scan_iter(match=self.prefix + "*", count=10_000)) if state.whole else []
                pipe.multi()
                if stale:
                    pipe.delete(*stale)
                if state.whole:
                    self._put_all(pipe, state)
                pipe.set(self.key("rev"), fork)
                pipe.set(self.key("epoch"), new)
                pipe.rpush(self.key("epochs"), *(json.dumps(s) for s in lineage))
                pipe.publish(self.channel, json.dumps({"epoch": new, "revision": state.revision}))
                pipe.execute()
            except redis.WatchError:
                return replace(loss, detail=f"{loss.detail}; Redis changed meanwhile, looking again")
        self.lineage = lineage
        if not state.whole:
            return replace(loss, status="followed", new_epoch=new, restored_to=revision,
                           detail=f"no sidecar holding the whole state claimed it back; this one (a working set) "
                                  f"went on from what Redis holds (revision {revision}) as epoch {new}")
        return replace(loss, status="written", new_epoch=new, restored_to=state.revision,
                       detail=f"this sidecar wrote its state back (revisions up to {state.revision}) as epoch {new}")

    def _read_seen(self) -> tuple[str, int] | None:
        try:
            data = json.loads(self.seen_file.read_text()) if self.seen_file is not None else None
            return (str(data["epoch"]), int(data["revision"])) if data else None
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _saw(self, epoch: str | None, revision: int) -> None:
        """Remember (epoch, revision) if newer; on disk (atomically) before a write is answered."""
        if not epoch or (self.seen is not None and self.seen[0] == epoch and self.seen[1] >= revision):
            return
        self.seen = (epoch, revision)
        if self.seen_file is None:
            return
        on_disk = self._read_seen()  # another worker of this sidecar may be ahead: never go back
        if on_disk is not None and on_disk[0] == epoch and on_disk[1] >= revision:
            return
        temp = self.seen_file.with_name(f".{self.seen_file.name}.{os.getpid()}")
        try:
            temp.write_text(json.dumps({"epoch": epoch, "revision": revision}))
            os.replace(temp, self.seen_file)
        except OSError as exc:
            log.warning("could not remember the revision seen in %s: %s", self.seen_file, exc)

    def _put_all(self, pipe: Any, state: RuntimeState) -> None:
        key = self.key
        hashes: dict[str, dict[str, str]] = {
            key("roles"): {r: json.dumps(rec) for r, rec in state.roles.items()},
            key("restricted"): {r: json.dumps(sorted(f)) for r, f in state.restricted.items()},
            key("users"): state.users, key("owners"): state.owners}
        hashes.update({key("roleperms:" + r): {k: json.dumps(v) for k, v in p.items()}
                       for r, p in state.role_permissions.items()})
        hashes.update({key("members:" + g): m for g, m in state.members.items()})
        hashes.update({key("overrides:" + g): {f"{s} {k}": json.dumps(v) for s, vals in o.items() for k, v in vals.items()}
                       for g, o in state.overrides.items()})
        for name, mapping in hashes.items():
            items = list(mapping.items())
            for start in range(0, len(items), 10_000):
                pipe.hset(name, mapping=dict(items[start:start + 10_000]))
        sets: dict[str, list[str]] = {key("bans:" + g): sorted(us) for g, us in state.bans.items()}
        by_role: dict[str, list[str]] = {}
        for uid, role in state.users.items():
            by_role.setdefault(role, []).append(uid)
        sets.update({key("roleusers:" + r): uids for r, uids in by_role.items()})
        sets.update(_indexes(self, state.role_permissions, state.overrides, state.owners, state.members))
        for name, members in sets.items():
            for start in range(0, len(members), 10_000):
                pipe.sadd(name, *members[start:start + 10_000])
        pipe.set(key("indexed"), 1)

    def close(self) -> None:
        self.client.close()


def _indexes(store: RedisStore, role_permissions: dict[str, Any], overrides: dict[str, Any],
             owners: dict[str, str], members: dict[str, dict[str, str]]) -> dict[str, list[str]]:
    """The index sets of a whole state: which roles have permissions and which groups
    overrides (the policy part loads through them), a user's groups, and what they own."""
    sets: dict[str, list[str]] = {store.key("index:roleperms"): sorted(role_permissions),
                                  store.key("index:overrides"): sorted(overrides)}
    for guid, uids in members.items():
        for uid in uids:
            sets.setdefault(store.user_groups_key(uid), []).append(guid)
    for guid, owner in owners.items():
        sets.setdefault(store.owned_key(owner), []).append(guid)
    return {name: values for name, values in sets.items() if values}


class _mapped:
    """Turns Redis errors into StoreError (503), keeping the cause."""

    def __init__(self, doing: str) -> None:
        self.doing = doing

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        if isinstance(exc, redis.RedisError) and not isinstance(exc, redis.WatchError):
            raise StoreError(f"Redis is unavailable; could not {self.doing}: {exc}") from exc
