"""The distributed store: runtime state in Redis, shared by every sidecar on every host.

Keys, all under a prefix so that several apps can share one Redis, inside one hash tag
(prefix chatauthz: -> keys {chatauthz}:rev, ...: redisconn.keyspace) so that a cluster-mode
Redis holds them in one slot and the transactions below run there unchanged:
  rev, epoch                 the revision counter; an id that changes if Redis loses its data
  epochs                     list of JSON {epoch, parent, fork, lost, at}: how each epoch began
  recovery, recovery-claims  while Redis lacks writes sidecars hold: a fence (writes refused)
                             and each such sidecar's claim (its revision); see recover()
  layout                     "2": users and owners in buckets, the journal a stream
  journal                    stream, entry id "<revision>-0", fields entry = JSON {at, actor, ops}
                             and touched = JSON of what the ops change (Entities.tokens; "*"
                             for a bigger write), the last JOURNAL_KEEP writes
  policy                     a counter every write of the role policy bumps (what readers watch)
  roles, restricted          hashes role -> JSON        roleperms:<role>   hash key -> JSON
  users:<b>                  hash uid -> role           roleusers:<role>   set of uids (index)
  owners:<b>                 hash guid -> owner         members:<guid>     hash uid -> scope
  bans:<guid>                set of uids                overrides:<guid>   hash "scope key" -> JSON
  channel                    pub/sub {"epoch", "revision"} after every write (a hint only)
where <b> is the bucket of the id: the first 3 hex digits of its SHA-1 (4096 buckets), so that
a write watching one user's role does not conflict with writes to every other user's.

Every op is a few absolute commands on its entity's keys (RedisStore._commands; the few that
must read first are functions of OPS_LUA), run in order by a script with no help from any
sidecar's memory. The revision comes from INCR rev in the same script or MULTI that XADDs the
journal entry with the id <revision>-0 and publishes the hint, so revisions have no gap and no
repeat and the stream is in revision order.

A Sidecar's write (write_tracked) conflicts only on what its plan read (sidecar.readset), and
costs one round trip: plan on the state kept current by the follower -> one script (WRITE),
atomic as every script is: refused while fenced; if the epoch changed, or a commit after the
revision the plan read at changed an entity the plan touched (read, or changed by its ops: the
journal's touched field says what each commit changed), catch up and plan again; else the ops,
INCR rev, XADD, PUBLISH, and the commits between handed back, which the writer applies before
its own. Nothing changes an entity without a journal entry saying so, so nothing needs a WATCH.
So writes to unrelated entities never conflict, and two writes whose checks depend on each
other's entities commit in a serial order. Retries of one process go one at a time (a hot
entity degrades to serial writes, not a livelock). A WRITE that ran but whose answer was lost
is never run twice: run again, it finds its own commit in the journal, touching what it
touched, and is refused. A store-level write (write: the importer, the tests) reads what it
likes, so it watches rev itself: it commits only if nobody wrote meanwhile.

Followers read the stream from their last revision (changes_since), woken by the pub/sub hint
or the periodic check: a lost hint costs nothing, the next one or the tick reads from there.
This is the only module that talks to Redis for state; its errors become StoreError. The
client (one URL, Sentinel's primary, a cluster) comes from sidecar.stores.redisconn, which also
makes every transaction that commits WAIT for redis_min_replicas after its EXEC (a WRITE then
runs inside one).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import redis
from redis.commands.core import Script
from redis.exceptions import RedisClusterException

from sidecar.errors import StoreError
from sidecar.readset import Entities, written_by
from sidecar.state import POLICY_OPS, Op, RuntimeState, check_ops
from sidecar.stores.base import (
    BULK_OPS,
    DataLoss,
    Facts,
    FactsRead,
    Follower,
    Plan,
    PlanRun,
    ResyncNeeded,
    Runs,
    TrackedPlan,
    runs_json,
    runs_of,
    store_changed,
)
from sidecar.stores.redisconn import RedisSpec, confirm, connect, is_cluster, keyspace, unwrap

log = logging.getLogger("chatauthz.redis")
JOURNAL_KEEP = 50_000
LINEAGE_KEEP = 100
RECOVERY_TTL_S = 30  # fence and claims outlive a claimant's retries (seconds apart), not its death
WRITE_RETRIES = 30
TRACKED_ATTEMPTS = 150  # plans per write (write_tracked) while commits keep changing what it read
WINDOW_MAX = 1000  # commits a writer reads to see whether they changed what it read (more: catch up)
BATCH = 500
LAYOUT = "2"
BUCKET_DIGITS = 3  # users:<b>, owners:<b>: the first hex digits of SHA-1(id); DELETE_ROLE_USERS does the same

# The commands of ops (RedisStore._commands: [name, key, arguments...]), run by a script: plain
# HSET, HDEL, SADD, SREM, DEL, and the few that read first. Every name is checked before any runs.
OPS_LUA = """
local plain = {HSET = true, HDEL = true, SADD = true, SREM = true, DEL = true}
local reading = {}
-- PUT_INDEXED hash, field, value, index prefix: the field set, and moved from the index set of its old
-- value to that of its new (roleusers:<role>, owned:<uid>)
local function put_indexed(hash, field, value, index)
  local old = redis.call('HGET', hash, field)
  if old then redis.call('SREM', index .. old, field) end
  redis.call('HSET', hash, field, value)
  redis.call('SADD', index .. value, field)
end
reading.PUT_INDEXED = function(c) put_indexed(c[2], c[3], c[4], c[5]) end
-- DELETE_USER users bucket, uid, roleusers prefix
reading.DELETE_USER = function(c)
  local old = redis.call('HGET', c[2], c[3])
  if old then
    redis.call('SREM', c[4] .. old, c[3])
    redis.call('HDEL', c[2], c[3])
  end
end
-- DELETE_ROLE_USERS roleusers:<role>, users bucket prefix, bucket digits: the role's users go back to
-- default (each uid's bucket computed as RedisStore.user_field computes it)
reading.DELETE_ROLE_USERS = function(c)
  local uids = redis.call('SMEMBERS', c[2])
  local digits = tonumber(c[4])
  for i = 1, #uids do
    redis.call('HDEL', c[3] .. string.sub(redis.sha1hex(uids[i]), 1, digits), uids[i])
  end
  redis.call('DEL', c[2])
end
-- DELETE_GROUP_INDEX owners bucket, members:<guid>, guid, owned prefix, user-groups prefix
reading.DELETE_GROUP_INDEX = function(c)
  local old = redis.call('HGET', c[2], c[4])
  if old then redis.call('SREM', c[5] .. old, c[4]) end
  local uids = redis.call('HKEYS', c[3])
  for i = 1, #uids do redis.call('SREM', c[6] .. uids[i], c[4]) end
end
local function run_ops(commands)
  for _, c in ipairs(commands) do
    if not (plain[c[1]] or reading[c[1]]) then return 'not an op command: ' .. tostring(c[1]) end
  end
  for _, c in ipairs(commands) do
    if plain[c[1]] then redis.call(unpack(c)) else reading[c[1]](c) end
  end
end
"""
# The end of every write, after its ops: the next revision, its journal entry under the id
# <revision>-0 (so the stream is in revision order) with what it changed (Entities.tokens), the
# hint {epoch, revision} (only a hint: followers read the stream, sidecar.sync). Returns the new
# revision.
COMMIT_LUA = """
local function commit(rev_key, journal_key, epoch_key, entry, touched, keep, channel)
  local rev = redis.call('INCR', rev_key)
  redis.call('XADD', journal_key, 'MAXLEN', keep, rev .. '-0', 'entry', entry, 'touched', touched)
  redis.call('PUBLISH', channel, '{"epoch":' .. cjson.encode(redis.call('GET', epoch_key) or '') .. ',"revision":'
             .. rev .. '}')
  return rev
end
"""
# One op's commands inside a MULTI (Store.write, a bulk write's other ops). KEYS[1] rev (the slot);
# ARGV[1] the commands as JSON.
APPLY = OPS_LUA + """
local problem = run_ops(cjson.decode(ARGV[1]))
if problem then return redis.error_reply(problem) end
return 1
"""
# The end of a write in a MULTI (Store.write, write_batch), after its ops. KEYS: rev, journal,
# epoch; ARGV: entry JSON, touched JSON, JOURNAL_KEEP, channel, a revision R, WINDOW_MAX. Returns
# {revision, the entries after R and before it (none when more than WINDOW_MAX)}: what the writer
# applies before its own write, without another look.
COMMIT = COMMIT_LUA + """
local rev = commit(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
local from = tonumber(ARGV[5])
local between = {}
if rev - 1 > from and rev - 1 - from <= tonumber(ARGV[6]) then
  between = redis.call('XRANGE', KEYS[2], (from + 1) .. '-0', (rev - 1) .. '-0')
end
return {rev, between}
"""
# A Sidecar's write, whole, in one call (write_tracked): check that no commit after the revision its
# plan read at changed an entity the plan touched (read, or changed by its ops), then the ops and the
# commit. KEYS: epoch, rev, recovery, journal; ARGV: the plan's epoch, its revision R, WINDOW_MAX,
# the touched tokens (JSON), the commands (JSON; '' for a plan with no ops: the check only), entry
# JSON, the tokens its ops change (JSON), JOURNAL_KEEP, channel, the policy counter ('' unless the
# ops change the role policy). Returns {0} while fenced; {2, rev} when a commit after R touched
# what the plan did (or the epoch changed, or the stream no longer holds them, or more than
# WINDOW_MAX): catch up and plan again; {1, revision, the entries after R before it} when done
# (for no ops: Redis's revision, nothing written). The tokens meet as Entities.touches says: "*"
# meets anything, "users" any "u:" token, "owners" any "o:" one, else equal tokens; an entry
# without tokens (an older writer) meets anything.
WRITE = OPS_LUA + COMMIT_LUA + """
if redis.call('EXISTS', KEYS[3]) == 1 then return {0} end
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then return {2, 0} end
local rev = tonumber(redis.call('GET', KEYS[2]) or '0')
local from = tonumber(ARGV[2])
if rev < from or rev - from > tonumber(ARGV[3]) then return {2, rev} end
local between = {}
if rev > from then
  between = redis.call('XRANGE', KEYS[4], (from + 1) .. '-0', rev .. '-0')
  if #between ~= rev - from then return {2, rev} end
  local mine, users, owners = {}, false, false
  for _, t in ipairs(cjson.decode(ARGV[4])) do
    mine[t] = true
    local kind = string.sub(t, 1, 2)
    if kind == 'u:' then users = true elseif kind == 'o:' then owners = true end
  end
  for _, e in ipairs(between) do
    local fields, touched = e[2], nil
    for i = 1, #fields, 2 do
      if fields[i] == 'touched' then touched = fields[i + 1] end
    end
    if touched == nil or mine['*'] then return {2, rev} end
    for _, t in ipairs(cjson.decode(touched)) do
      local kind = string.sub(t, 1, 2)
      if t == '*' or mine[t] or (t == 'users' and users) or (t == 'owners' and owners)
         or (kind == 'u:' and mine['users']) or (kind == 'o:' and mine['owners']) then
        return {2, rev}
      end
    end
  end
end
if ARGV[5] == '' then return {1, rev, {}} end
local problem = run_ops(cjson.decode(ARGV[5]))
if problem then return redis.error_reply(problem) end
if ARGV[10] ~= '' then redis.call('INCR', ARGV[10]) end
return {1, commit(KEYS[2], KEYS[4], KEYS[1], ARGV[6], ARGV[7], ARGV[8], ARGV[9]), between}
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
# A bulk write's ops, run inside its MULTI by one call: KEYS[1] rev (the key the call is routed
# by); ARGV: the keyspace, BUCKET_DIGITS, and a JSON list of runs [op name, [the ops' fields,
# flat, in the registry's order]]. Each op becomes the commands _queue queues for it (put_user and
# put_group: OPS_LUA's put_indexed, as PUT_INDEXED), in order.
RUN_OPS = OPS_LUA + """
local P, digits = ARGV[1], tonumber(ARGV[2])
local count = 0
for _, run in ipairs(cjson.decode(ARGV[3])) do
  local name, f = run[1], run[2]
  if name == 'put_member' then
    for i = 1, #f, 3 do
      redis.call('HSET', P .. 'members:' .. f[i], f[i + 1], f[i + 2])
      redis.call('SADD', P .. 'usergroups:' .. f[i + 1], f[i])
    end
    count = count + #f / 3
  elseif name == 'ban' then
    for i = 1, #f, 2 do
      redis.call('HDEL', P .. 'members:' .. f[i], f[i + 1])
      redis.call('SREM', P .. 'usergroups:' .. f[i + 1], f[i])
      redis.call('SADD', P .. 'bans:' .. f[i], f[i + 1])
    end
    count = count + #f / 2
  elseif name == 'put_user' or name == 'put_group' then
    local buckets, index = P .. 'users:', P .. 'roleusers:'
    if name == 'put_group' then buckets, index = P .. 'owners:', P .. 'owned:' end
    for i = 1, #f, 2 do
      put_indexed(buckets .. string.sub(redis.sha1hex(f[i]), 1, digits), f[i], f[i + 1], index)
    end
    count = count + #f / 2
  else
    return redis.error_reply('not a bulk op: ' .. tostring(name))
  end
end
return count
"""
# The facts one request reads, at one revision, in one call (a MULTI of one HGET per fact cost
# the client ~20 µs a command): KEYS epoch, rev, a user bucket per user, an owner bucket per
# group, then a members hash and a bans set per membership; ARGV #users + #groups, then the
# field of each (uid, guid, member uid). Reply: epoch, rev, the values in that order.
READ_FACTS = """
local out = {redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2])}
local singles, key = tonumber(ARGV[1]), 3
for field = 2, singles + 1 do
  out[#out + 1] = redis.call('HGET', KEYS[key], ARGV[field])
  key = key + 1
end
for field = singles + 2, #ARGV do
  out[#out + 1] = redis.call('HGET', KEYS[key], ARGV[field])
  out[#out + 1] = redis.call('SISMEMBER', KEYS[key + 1], ARGV[field])
  key = key + 2
end
return out
"""
BULK_CALL_FIELDS = 300_000  # fields per RUN_OPS call (its argument stays a few MB)


def bucket(ident: str) -> str:
    """The bucket of a user or group id (stable across processes, as DELETE_ROLE_USERS computes it)."""
    return hashlib.sha1(ident.encode(), usedforsecurity=False).hexdigest()[:BUCKET_DIGITS]


BUCKETS = tuple(f"{n:0{BUCKET_DIGITS}x}" for n in range(16 ** BUCKET_DIGITS))


class _Script:
    """A Lua script called as redis-py's registered ones are (keys=, args=, client=). On one
    Redis (or Sentinel's primary) it is EVALSHA, loaded first by the pipeline on its own
    connection; on a cluster it is EVAL of the source, as a cluster pipeline loads nothing and
    a NOSCRIPT inside MULTI would leave the rest of the transaction applied."""

    def __init__(self, store: RedisStore, source: str) -> None:
        self.store, self.source = store, source
        self._registered: Script | None = None

    def __call__(self, keys: list[str], args: list[Any] | None = None, client: Any = None) -> Any:
        args = args or []
        target = unwrap(client if client is not None else self.store.client)
        if is_cluster(target):
            return target.execute_command("EVAL", self.source, len(keys), *keys, *args)
        if self._registered is None:
            self._registered = Script(unwrap(self.store.client), self.source)
        return self._registered(keys=keys, args=args, client=target)


class RedisStore:
    def __init__(self, redis_at: str | RedisSpec, prefix: str = "chatauthz:", timeout_s: float = 1.0,
                 recovery_grace_s: float = 0.0, seen_dir: Path | None = None) -> None:
        """redis_at: a URL, or a RedisSpec (Sentinel, cluster, min_replicas: sidecar.stores.redisconn)."""
        self.spec = RedisSpec(url=redis_at, timeout_s=timeout_s) if isinstance(redis_at, str) else redis_at
        self.url = self.spec.identity
        self.prefix = prefix
        self.keyspace = keyspace(prefix)  # what every key starts with: the prefix as one hash tag
        self.client: redis.Redis = connect(self.spec)  # or a RedisCluster (alike to this module)
        self.channel = self.key("channel")
        self.epoch: str | None = None  # the epoch of the data this sidecar holds
        self.lineage: list[dict[str, Any]] = []  # how that epoch came to be (Redis's `epochs`)
        self.position = 0  # the newest revision of self.epoch handed to this sidecar (read or written)
        self.recovery_grace_s = recovery_grace_s  # after a loss, how long claims are gathered
        self.claimant = uuid.uuid4().hex
        self._layout_checked = False  # _check_layout ran (a load, or the first write)
        # what writes cost: WRITE calls whose outcome was not learnt (a dropped connection), plans run
        # again after the journal showed a commit to what they read; both stay zero for unrelated writes
        self.conflicts = 0
        self.replans = 0
        self._counting = threading.Lock()
        # A write that conflicted retries holding this, and while it is held new writes of this
        # process queue behind it: under contention on one entity, this process's writes go one at
        # a time (as all of them did before), so that none keeps losing to the next
        self._retrying = threading.Lock()
        self._seen_lock = threading.Lock()
        self._pending: tuple[str, int] | None = None  # the newest (epoch, revision) to be put on disk
        # The newest (epoch, revision) this sidecar has seen, kept on disk across its restarts: a
        # Redis found below it after a restart of both lost writes, though no state remembers them.
        name = hashlib.sha256(f"{self.url}|{prefix}".encode()).hexdigest()[:16]
        self.seen_file = seen_dir / f"redis-seen-{name}.json" if seen_dir is not None else None
        self._seen_disk = _SeenFile(self.seen_file) if self.seen_file is not None else None
        self.seen = self._read_seen()
        self._apply_script = _Script(self, APPLY)
        self._commit_script = _Script(self, COMMIT)
        self._write_script = _Script(self, WRITE)
        self._claim_script = _Script(self, CLAIM)
        self._run_ops = _Script(self, RUN_OPS)
        self._read_facts = _Script(self, READ_FACTS)

    def key(self, name: str) -> str:
        return self.keyspace + name

    def pattern(self, name: str) -> str:
        """A SCAN MATCH pattern for the keys that start with key(name)."""
        return "".join("\\" + c if c in "*?[]\\" else c for c in self.key(name)) + "*"

    # Where each entity lives: the one place the layout of users, owners and groups is spelled.
    def user_field(self, uid: str) -> tuple[str, str]:
        """(hash key, field) holding uid's role: the user's bucket."""
        return self.key("users:" + bucket(uid)), uid

    def owner_field(self, guid: str) -> tuple[str, str]:
        """(hash key, field) holding guid's owner: the group's bucket."""
        return self.key("owners:" + bucket(guid)), guid

    def user_keys(self) -> list[str]:
        """Every hash that may hold a user's role."""
        return [self.key("users:" + b) for b in BUCKETS]

    def owner_keys(self) -> list[str]:
        """Every hash that may hold a group's owner."""
        return [self.key("owners:" + b) for b in BUCKETS]

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

    def policy_key(self) -> str:
        """Bumped by every write of the role policy (roles, their permissions, restricted features)."""
        return self.key("policy")

    # -- reads -----------------------------------------------------------------------------
    def revision(self) -> int:
        with _mapped("read the revision"):
            return int(self.client.get(self.key("rev")) or 0)

    def load(self) -> RuntimeState:
        """Everything, without blocking Redis: scan, then replay what was written meanwhile."""
        with _mapped("load the runtime state"):
            self._check_layout()
            epoch = str(self.client.get(self.key("epoch")) or "")
            lineage = [json.loads(step) for step in self.client.lrange(self.key("epochs"), 0, -1)]
            start = self.revision()
            state = RuntimeState(revision=start, epoch=epoch)
            shared: dict[str, str] = {}  # one str object per role and scope name, not one per entry
            state.roles = {r: json.loads(v) for r, v in self._hscan("roles")}
            state.restricted = {r: frozenset(json.loads(v)) for r, v in self._hscan("restricted")}
            for _, users in self._per_entity("users:", "hgetall"):
                state.users.update((uid, shared.setdefault(role, role)) for uid, role in users.items())
            for _, owners in self._per_entity("owners:", "hgetall"):
                state.owners.update(owners)
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
            self.epoch, self.lineage, self.position = epoch, lineage, start
            for revision, ops in self.changes_since(start, remembered=False):  # idempotent: safe to replay
                state.apply_all(ops, revision)
            self._saw(epoch, state.revision)
            return state

    def _refuse_the_old_layout(self) -> None:
        """Keys written before the hash tag (prefix + name) would look like an empty Redis."""
        if self.keyspace == self.prefix or self.client.exists(self.key("epoch")):
            return
        if self.client.exists(self.prefix + "epoch"):
            raise StoreError(f"Redis holds this app's state in the key layout of before hash tags "
                             f"({self.prefix}rev, ...), and none in the current one ({self.key('rev')}, ...); "
                             "rename the keys before starting (docs/distributed.md, 'Upgrading the key layout')")

    def _layout_before_writing(self) -> None:
        """A store that writes before it ever loaded (a seed, an import) sets the layout first."""
        if not self._layout_checked:
            with _mapped("check the key layout"):
                self._check_layout()
            self._layout_checked = True

    def _check_layout(self) -> None:
        """A new or emptied Redis gets an epoch and this layout; one an older chatauthz wrote (a
        `users` and an `owners` hash, a hash journal) is moved to this layout first (_upgrade)."""
        self._refuse_the_old_layout()
        with self.client.pipeline(transaction=True) as pipe:
            pipe.set(self.key("epoch"), uuid.uuid4().hex, nx=True)
            pipe.get(self.key("layout"))
            pipe.exists(self.key("users"), self.key("owners"))
            pipe.type(self.key("journal"))
            _, layout, legacy, journal = pipe.execute()
        if layout == LAYOUT and not legacy and journal in ("stream", "none"):
            return
        if layout is None and (legacy or journal == "hash"):
            self._upgrade()
            return
        if layout is None and journal == "none":
            self.client.set(self.key("layout"), LAYOUT, nx=True)
            if not legacy:  # nothing written yet: written from now on with its index sets
                self.client.set(self.key("indexed"), 1, nx=True)
            return
        raise StoreError(f"Redis under the prefix {self.prefix!r} holds chatauthz state of another layout (layout "
                         f"{layout!r}, old users/owners hashes: {bool(legacy)}, journal: {journal}); is a sidecar "
                         "of another version writing to it? See docs/distributed.md, upgrading",
                         code="ERR_STORE_LAYOUT", status=503)

    def _upgrade(self) -> None:
        """Move what an older chatauthz wrote (users and owners in one hash each, the journal a
        hash revision -> entry) to this layout, in one transaction; if anyone writes meanwhile,
        the next load looks again. Every sidecar of the older version must be stopped first."""
        old = [self.key(name) for name in ("users", "owners", "journal")]
        with self.client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(self.key("rev"), self.key("epoch"), *old)  # type: ignore[no-untyped-call]
                users: dict[str, str] = pipe.hgetall(old[0])  # type: ignore[assignment]
                owners: dict[str, str] = pipe.hgetall(old[1])  # type: ignore[assignment]
                journal: dict[str, str] = pipe.hgetall(old[2]) if pipe.type(old[2]) == "hash" else {}  # type: ignore[assignment]
                buckets: dict[str, Any] = {}
                for uid, role in users.items():
                    key, field = self.user_field(uid)
                    buckets.setdefault(key, {})[field] = role
                for guid, owner in owners.items():
                    key, field = self.owner_field(guid)
                    buckets.setdefault(key, {})[field] = owner
                pipe.multi()
                pipe.delete(*old)
                for key, mapping in buckets.items():
                    pipe.hset(key, mapping=mapping)
                for revision in sorted(int(r) for r in journal):
                    pipe.xadd(old[2], {"entry": journal[str(revision)]}, id=f"{revision}-0")
                pipe.set(self.key("layout"), LAYOUT)
                pipe.execute()
                log.warning("Redis under %r held an older layout: moved %d users, %d owners and %d journal "
                            "entries to layout %s", self.prefix, len(users), len(owners), len(journal), LAYOUT)
            except redis.WatchError:
                raise StoreError("Redis changed while its older layout was being moved; is a sidecar of the "
                                 "older version still writing? Try again", code="ERR_STORE_LAYOUT",
                                 status=503) from None

    def _hscan(self, name: str) -> Iterator[tuple[str, str]]:
        return self.client.hscan_iter(self.key(name), count=10_000)

    def _per_entity(self, kind: str, command: str) -> Iterator[tuple[str, Any]]:
        """(entity id, value) for every key prefix+kind+<id>, fetched in pipelined batches."""
        keys = list(self.client.scan_iter(match=self.pattern(kind), count=10_000))
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
        self._check_layout()
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
        keys = [self.key("epoch"), self.key("rev")]
        fields: list[str] = [str(len(facts.users) + len(facts.groups))]
        for uid in facts.users:
            keys.append(self.user_field(uid)[0])
            fields.append(uid)
        for guid in facts.groups:
            keys.append(self.owner_field(guid)[0])
            fields.append(guid)
        for guid, uid in facts.memberships:
            keys += [self.members_key(guid), self.bans_key(guid)]
            fields.append(uid)
        with _mapped("read the facts of a request"):
            epoch, rev, *values = self._read_facts(keys, fields)  # one round trip, one revision
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
            with self.client.pipeline(transaction=True) as pipe:  # every bucket, at one revision
                for key in self.owner_keys():
                    pipe.hkeys(key)
                return sorted(str(guid) for guids in pipe.execute() for guid in guids)

    def users_with_role(self, role: str) -> int:
        with _mapped("count a role's users"):
            return int(self.client.scard(self.key("roleusers:" + role)))

    def changes_since(self, revision: int, *, remembered: bool = True) -> list[tuple[int, list[Op]]]:
        """The journal after `revision`, read from the stream in one atomic look (epoch, rev, entries).
        Never from a pub/sub message: whoever may PUBLISH on the channel (another app on the same
        Redis, say) could then write this sidecar's state; a message is only a hint to read."""
        with _mapped("read the journal"):
            seen = self.seen  # before the read: a write of this process may commit (and be seen) meanwhile
            with self.client.pipeline(transaction=True) as pipe:
                pipe.get(self.key("epoch"))
                pipe.get(self.key("rev"))
                pipe.xrange(self.key("journal"), min=f"{revision + 1}-0", max="+")
                epoch, raw, entries = pipe.execute()
            current = int(raw or 0)
            if epoch != self.epoch or current < revision:
                raise ResyncNeeded(f"Redis epoch or revision changed (revision {current}, ours {revision})")
            if remembered and seen is not None and seen[0] == epoch and current < seen[1]:
                raise ResyncNeeded(f"Redis is at revision {current}, below the {seen[1]} this sidecar "
                                   "saw before it restarted")
            found = _entries(entries)
            if [rev for rev, _ in found] != list(range(revision + 1, current + 1)):
                raise ResyncNeeded(f"the journal no longer holds revisions {revision + 1}..{current}")
            self._saw(self.epoch, current)  # the caller applies everything up to current
            self._handed(epoch, current)
            return [(rev, entry["ops"]) for rev, entry in found]

    def journal(self, since: int, offset: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
        with _mapped("read the journal"):
            current = self.revision()
            oldest = max(since + 1, current - JOURNAL_KEEP + 1, 1)
            first, last = oldest + offset, min(current, oldest + offset + limit - 1)
            entries = self.client.xrange(self.key("journal"), min=f"{first}-0", max=f"{last}-0") \
                if first <= last else []
            found = [{"revision": rev, **entry} for rev, entry in _entries(entries)]
            return max(0, current - oldest + 1), found

    def follow(self, catch_up: Callable[[], None], interval_s: float) -> Follower:
        """Subscribable: pub/sub hints plus a periodic check (sidecar.sync.RedisSync); a hint at or
        below what this sidecar was already handed is not followed."""
        from sidecar.sync import RedisSync
        return RedisSync(self.client, self.channel, catch_up, interval_s=interval_s,
                         known=lambda: (self.epoch, self.position))

    def _handed(self, epoch: str | None, revision: int) -> None:
        if epoch == self.epoch and revision > self.position:
            self.position = revision

    # -- writes ----------------------------------------------------------------------------
    def write(self, plan: Plan, actor: str) -> tuple[int, list[Op]]:
        """A plan that reads what it likes (through changes_since): it commits only if nobody wrote
        meanwhile (WATCH rev), else it runs again after a short random pause."""
        self._layout_before_writing()
        with _mapped("write"):
            for attempt in range(WRITE_RETRIES):
                with self.client.pipeline(transaction=True) as pipe:
                    try:
                        pipe.watch(self.key("rev"), self.key("epoch"), self.key("recovery"))  # type: ignore[no-untyped-call]
                        ops = check_ops(plan())  # catches up (changes_since), checks; registry shapes only
                        raw, fenced = pipe.mget(self.key("rev"), self.key("recovery"))
                        if fenced:
                            raise _fenced()
                        if not ops:
                            pipe.unwatch()
                            return int(raw or 0), []
                        return self._commit(pipe, ops, actor)[0], ops
                    except redis.WatchError:
                        self._count("conflicts")
                        time.sleep(random.uniform(0, min(0.05, 0.001 * 2 ** attempt)))
            raise StoreError("too many concurrent writes; try again", status=503)

    def write_tracked(self, plan: TrackedPlan, actor: str) -> tuple[int, list[Op], list[tuple[int, list[Op]]]]:
        """ReadTracking: commit unless a commit changed what the plan read (see the module docstring)."""
        self._layout_before_writing()
        with _mapped("write"), contextlib.ExitStack() as serial:
            refresh, holding = False, self._retrying.locked()
            if holding:  # writes of this process are conflicting: queue behind them
                serial.enter_context(self._retrying)
            for attempt in range(TRACKED_ATTEMPTS):
                if attempt == 1 and not holding:
                    serial.enter_context(self._retrying)  # retries of this process, one at a time
                    holding = True
                run = plan(refresh)
                ops = check_ops(run.ops)
                done = self._try_write(run, ops, actor)
                if done is not None:
                    return done
                self._count("replans")
                refresh = True  # catch up, then plan again
                if attempt:
                    time.sleep(random.uniform(0, min(0.02, 0.0005 * 2 ** attempt)))
            raise StoreError("too many concurrent writes; try again", status=503)

    def _try_write(self, run: PlanRun, ops: list[Op], actor: str
                    ) -> tuple[int, list[Op], list[tuple[int, list[Op]]]] | None:
        """One WRITE call: (revision, ops, the commits between), or None when a commit since the
        plan's revision changed what it touched (or Redis could not say: plan again). Refused
        while fenced. A plan with no ops is only checked: (Redis's revision, [], [])."""
        touched = written_by(ops)
        reads = Entities()
        reads.update(run.reads)
        reads.update(touched)
        entry = orjson.dumps({"at": time.time(), "actor": actor, "ops": ops}) if ops else b""
        commands = orjson.dumps([c for op in ops for c in self._commands(op)]) if ops else b""
        keys = [self.key("epoch"), self.key("rev"), self.key("recovery"), self.key("journal")]
        args = [run.epoch, run.revision, WINDOW_MAX, orjson.dumps(reads.tokens()), commands, entry,
                _touched(touched), JOURNAL_KEEP, self.channel, self.policy_key() if touched.policy else ""]
        try:
            answer = self._confirmed(self._write_script, keys, args, bool(ops))
        except (redis.ConnectionError, redis.TimeoutError, redis.WatchError):
            # whether it ran is unknown: planning again after catching up finds out (a WRITE that ran
            # is in the journal with what it touched: the same call again is refused, never run twice)
            self._count("conflicts")
            return None
        status = int(answer[0])
        if status == 0:
            raise _fenced()
        if status == 2:
            return None
        if not ops:
            return run.revision, [], []
        revision = int(answer[1])
        between = [(rev, e["ops"]) for rev, e in _raw_entries(answer[2])] if answer[2] else []
        self._saw(self.epoch, revision)
        self._handed(self.epoch, revision)
        if [rev for rev, _ in between] != list(range(run.revision + 1, revision)):
            between = []  # the caller catches up
        return revision, ops, between

    def _confirmed(self, script: _Script, keys: list[str], args: list[Any], commits: bool) -> Any:
        """The script in one round trip; with redis_min_replicas, one that commits runs in a MULTI
        followed by WAIT (sidecar.stores.redisconn.confirm)."""
        if not (commits and self.spec.min_replicas):
            return script(keys=keys, args=args)
        with self.client.pipeline(transaction=True) as pipe:
            script(keys=keys, args=args, client=pipe)
            return confirm(pipe).execute()[-1]

    def _commit(self, pipe: Any, ops: list[Op], actor: str, current: int = 0
                ) -> tuple[int, list[tuple[int, list[Op]]]]:
        """Queue the ops and the commit script in MULTI; EXEC; the new revision, and the commits
        after `current` and before it (empty when there are more than WINDOW_MAX)."""
        pipe.multi()
        for op in ops:
            self._queue(pipe, op)
        self._queue_commit(pipe, ops, actor, current)
        return self._committed(confirm(pipe).execute()[-1], current)

    def _queue_commit(self, pipe: Any, ops: list[Op], actor: str, current: int, ops_json: str | None = None) -> None:
        """Queue, inside a MULTI after the ops' commands, the commit script (and the policy counter).
        ops_json: the ops already as JSON instead (a bulk write's: BULK_OPS, no policy op), which
        the journal records as touching everything (a write that read anything must plan again)."""
        if ops_json is None:
            entry = json.dumps({"at": time.time(), "actor": actor, "ops": ops}, separators=(",", ":"))
            touched = written_by(ops)
            changed = _touched(touched)
        else:
            entry = f'{{"at":{json.dumps(time.time())},"actor":{json.dumps(actor)},"ops":{ops_json}}}'
            touched, changed = Entities(), EVERYTHING
        if touched.policy:
            pipe.incr(self.policy_key())
        self._commit_script(keys=[self.key("rev"), self.key("journal"), self.key("epoch")],
                            args=[entry, changed, JOURNAL_KEEP, self.channel, current, WINDOW_MAX], client=pipe)

    def _committed(self, answer: Any, current: int) -> tuple[int, list[tuple[int, list[Op]]]]:
        """The commit script's answer: the new revision, and the commits after `current` before it."""
        revision, found = int(answer[0]), answer[1]
        self._saw(self.epoch, revision)
        self._handed(self.epoch, revision)
        later = [(rev, e["ops"]) for rev, e in _raw_entries(found)] if found else []
        if [rev for rev, _ in later] != list(range(current + 1, revision)):
            later = []
        return revision, later

    def _count(self, name: str) -> None:
        with self._counting:
            setattr(self, name, getattr(self, name) + 1)

    def _queue(self, pipe: Any, op: Op) -> None:
        """Queue one op (its commands, run by one script) in a MULTI."""
        self._apply_script(keys=[self.key("rev")], args=[orjson.dumps(self._commands(op)).decode()], client=pipe)

    def _commands(self, op: Op) -> list[list[str]]:
        """One op as absolute commands on its entity's keys (run by OPS_LUA)."""
        key, name = self.key, op["op"]
        if name == "put_role":
            return [["HSET", key("roles"), op["role"], json.dumps(op["record"])]]
        if name == "delete_role":
            role = op["role"]
            return [["HDEL", key("roles"), role], ["HDEL", key("restricted"), role], ["DEL", key("roleperms:" + role)],
                    ["SREM", key("index:roleperms"), role],
                    ["DELETE_ROLE_USERS", key("roleusers:" + role), key("users:"), str(BUCKET_DIGITS)]]
        if name == "set_role_permissions":
            fields = [part for k, v in op["values"].items() for part in (k, json.dumps(v))]
            return [["HSET", key("roleperms:" + op["role"]), *fields], ["SADD", key("index:roleperms"), op["role"]]]
        if name == "unset_role_permission":
            return [["HDEL", key("roleperms:" + op["role"]), op["key"]]]
        if name == "set_restricted_features":
            return [["HSET", key("restricted"), op["role"], json.dumps(sorted(op["features"]))]]
        if name == "put_user":
            users, uid = self.user_field(op["uid"])
            return [["PUT_INDEXED", users, uid, op["role"], key("roleusers:")]]
        if name == "delete_user":
            users, uid = self.user_field(op["uid"])
            return [["DELETE_USER", users, uid, key("roleusers:")]]
        if name == "put_group":
            owners, guid = self.owner_field(op["guid"])
            return [["PUT_INDEXED", owners, guid, op["owner"], key("owned:")]]
        if name == "delete_group":
            guid = op["guid"]
            owners, field = self.owner_field(guid)
            return [["DELETE_GROUP_INDEX", owners, self.members_key(guid), field, key("owned:"), key("usergroups:")],
                    ["HDEL", owners, field],
                    ["DEL", self.members_key(guid), self.bans_key(guid), self.overrides_key(guid)],
                    ["SREM", key("index:overrides"), guid]]
        if name == "put_member":
            return [["HSET", self.members_key(op["guid"]), op["uid"], op["scope"]],
                    ["SADD", self.user_groups_key(op["uid"]), op["guid"]]]
        if name == "delete_member":
            return [["HDEL", self.members_key(op["guid"]), op["uid"]],
                    ["SREM", self.user_groups_key(op["uid"]), op["guid"]]]
        if name == "ban":
            return [["HDEL", self.members_key(op["guid"]), op["uid"]],
                    ["SREM", self.user_groups_key(op["uid"]), op["guid"]],
                    ["SADD", self.bans_key(op["guid"]), op["uid"]]]
        if name == "unban":
            return [["SREM", self.bans_key(op["guid"]), op["uid"]]]
        if name == "set_scope_permissions":
            fields = [part for k, v in op["values"].items() for part in (f"{op['scope']} {k}", json.dumps(v))]
            return [["HSET", self.overrides_key(op["guid"]), *fields], ["SADD", key("index:overrides"), op["guid"]]]
        if name == "unset_scope_permission":
            return [["HDEL", self.overrides_key(op["guid"]), f"{op['scope']} {op['key']}"]]
        raise ValueError(f"unknown op {name!r}")

    # -- bulk writes (chatauthz import) -----------------------------------------------------
    def write_batch(self, ops: list[Op], actor: str, expect_revision: int) -> int:
        """BulkWritable. Ops of the kinds an import writes (BULK_OPS) go in as write_runs; others
        are queued one by one (_queue), then _commit, all in one MULTI."""
        check_ops(ops)
        runs = runs_of(ops)
        if runs is not None:
            return (self.write_runs([runs], actor, expect_revision) or [expect_revision])[0]

        def queue(pipe: Any, current: int) -> None:
            for op in ops:
                self._queue(pipe, op)
            self._queue_commit(pipe, ops, actor, current)
        return self._write_bulk(queue if ops else None, lambda answers, current: self._committed(answers[-1], current)[0],
                                actor, expect_revision)

    bulk_call_ops = 1  # one batch a MULTI: a batch's script blocks Redis for as long as it runs

    def write_runs(self, batches: list[Runs], actor: str, expect_revision: int,
                   journals: list[str] | None = None) -> list[int]:
        """BulkWritable: each batch's ops run by RUN_OPS (one call per BULK_CALL_FIELDS fields, no
        op dicts) and journaled from runs_json, then _commit; all the batches in one MULTI."""
        texts = journals if journals is not None else [runs_json(runs) for runs in batches]
        written = [(runs, text) for runs, text in zip(batches, texts, strict=True) if any(rows for _, rows in runs)]
        revisions: list[int] = []

        def queue(pipe: Any, current: int) -> None:
            for number, (runs, text) in enumerate(written):
                for call in self._run_ops_calls(runs):
                    self._run_ops(keys=[self.key("rev")], args=[self.keyspace, BUCKET_DIGITS, orjson.dumps(call)],
                                  client=pipe)
                self._queue_commit(pipe, [], actor, current + number, text)

        def committed(answers: list[Any], current: int) -> int:
            for number, answer in enumerate(a for a in answers if isinstance(a, list)):
                revisions.append(self._committed(answer, current + number)[0])
            return revisions[-1]
        if written:
            self._write_bulk(queue, committed, actor, expect_revision)
        else:
            self._write_bulk(None, committed, actor, expect_revision)
        return revisions

    @staticmethod
    def _run_ops_calls(runs: Runs) -> list[list[Any]]:
        """The RUN_OPS calls of a batch: its runs, fields flat, BULK_CALL_FIELDS at most a call."""
        calls: list[list[Any]] = [[]]
        fields = 0
        for name, rows in runs:
            if name not in BULK_OPS:
                raise ValueError(f"not a bulk op: {name!r}")
            for start in range(0, len(rows), BULK_CALL_FIELDS // 3):
                chunk = rows[start:start + BULK_CALL_FIELDS // 3]
                if fields and fields + 3 * len(chunk) > BULK_CALL_FIELDS:
                    calls.append([])
                    fields = 0
                calls[-1].append([name, list(itertools.chain.from_iterable(chunk))])
                fields += 3 * len(chunk)
        return [call for call in calls if call]

    def _write_bulk(self, queue: Callable[[Any, int], None] | None, committed: Callable[[list[Any], int], int],
                    actor: str, expect_revision: int) -> int:
        """One bulk write: queue(pipe, current revision) its commands and commits inside the MULTI,
        committed(EXEC's answers, current) the new revision; a write by anyone else since
        expect_revision (found, or breaking the WATCH) is ERR_STORE_CHANGED. No queue: nothing to
        write, the current revision."""
        self._layout_before_writing()
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
                if queue is None:
                    pipe.unwatch()
                    return current
                pipe.multi()
                queue(pipe, current)
                return committed(confirm(pipe).execute(), current)
            except redis.WatchError:
                raise store_changed(None, expect_revision) from None

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
            known = self.seen  # before the read: a write of this process may commit (and be seen) meanwhile
            with self.client.pipeline(transaction=False) as pipe:
                pipe.get(self.key("epoch"))
                pipe.get(self.key("rev"))
                pipe.lrange(self.key("epochs"), 0, -1)
                epoch, raw_rev, raw_lineage = pipe.execute()
            revision = int(raw_rev or 0)
            if epoch == state.epoch:
                seen = max(state.revision, known[1] if known and known[0] == epoch else 0)
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
                stale = list(self.client.scan_iter(match=self.pattern(""), count=10_000)) if state.whole else []
                pipe.multi()
                if stale:
                    pipe.delete(*stale)
                if state.whole:
                    self._put_all(pipe, state)
                pipe.set(self.key("layout"), LAYOUT)
                pipe.set(self.key("rev"), fork)
                pipe.set(self.key("epoch"), new)
                pipe.rpush(self.key("epochs"), *(json.dumps(s) for s in lineage))
                pipe.publish(self.channel, json.dumps({"epoch": new, "revision": state.revision}))
                confirm(pipe).execute()
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
        return self._seen_disk.read() if self._seen_disk is not None else None

    def _saw(self, epoch: str | None, revision: int) -> None:
        """Remember (epoch, revision) if newer; on disk (atomically) before a write is answered.
        Concurrent writes of this process share one file write: whoever writes, writes the newest."""
        if not epoch or (self.seen is not None and self.seen[0] == epoch and self.seen[1] >= revision):
            return
        with self._counting:
            pending = self._pending
            if pending is None or pending[0] != epoch or pending[1] < revision:
                self._pending = (epoch, revision)
        with self._seen_lock:  # one file writer at a time
            if self.seen is not None and self.seen[0] == epoch and self.seen[1] >= revision:
                return  # a concurrent writer wrote a newer one meanwhile
            pending = self._pending
            target = pending if pending is not None and pending[0] == epoch and pending[1] >= revision \
                else (epoch, revision)
            try:
                if self._seen_disk is not None:
                    self._seen_disk.put(target)  # never below what another worker of this sidecar put there
            finally:  # only once on disk: a concurrent writer that finds it here may answer
                self.seen = target

    def _put_all(self, pipe: Any, state: RuntimeState) -> None:
        key = self.key
        hashes: dict[str, dict[str, str]] = {
            key("roles"): {r: json.dumps(rec) for r, rec in state.roles.items()},
            key("restricted"): {r: json.dumps(sorted(f)) for r, f in state.restricted.items()}}
        for uid, role in state.users.items():
            users, field = self.user_field(uid)
            hashes.setdefault(users, {})[field] = role
        for guid, owner in state.owners.items():
            owners, field = self.owner_field(guid)
            hashes.setdefault(owners, {})[field] = owner
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
        if self._seen_disk is not None:
            self._seen_disk.close()


class _SeenFile:
    """The seen record, {"epoch", "revision"} as JSON, on disk: rewritten in place (one pwrite,
    padded over the old record, under flock so that the workers of one sidecar never go back
    below each other's), with no new file and rename per write; a file another program removed
    is made again. Every error is a warning: decisions and writes go on."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def read(self) -> tuple[str, int] | None:
        try:
            with open(self.path, "rb") as file:
                fcntl.flock(file.fileno(), fcntl.LOCK_SH)
                return _seen_record(file.read())
        except OSError:
            return None

    def put(self, target: tuple[str, int]) -> None:
        try:
            fd = self._open()
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                raw = os.pread(fd, 4096, 0)
                on_disk = _seen_record(raw)
                if on_disk is not None and on_disk[0] == target[0] and on_disk[1] >= target[1]:
                    return
                data = json.dumps({"epoch": target[0], "revision": target[1]}).encode()
                os.pwrite(fd, data.ljust(len(raw)), 0)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError as exc:
            log.warning("could not remember the revision seen in %s: %s", self.path, exc)
            self.close()

    def _open(self) -> int:
        if self._fd is not None and os.fstat(self._fd).st_nlink == 0:
            self.close()  # removed under us: writing on would remember nothing
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)


def _seen_record(raw: bytes) -> tuple[str, int] | None:
    try:
        data = json.loads(raw) if raw.strip() else None
        return (str(data["epoch"]), int(data["revision"])) if data else None
    except (ValueError, KeyError, TypeError):
        return None


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
        if isinstance(exc, (redis.RedisError, RedisClusterException)) and not isinstance(exc, redis.WatchError):
            raise StoreError(f"Redis is unavailable; could not {self.doing}: {exc}") from exc


# Parsed journal entries by revision, with their text: a process reads each entry several times
# (its writes' windows, the commits handed back, the follower); it parses it once. Read-only.
_PARSED: dict[int, tuple[str, dict[str, Any]]] = {}
PARSED_KEEP = 8192


def _parse(revision: int, text: str) -> dict[str, Any]:
    known = _PARSED.get(revision)
    if known is not None and known[0] == text:  # same text (another epoch or prefix reparses)
        return known[1]
    if len(_PARSED) >= PARSED_KEEP:
        _PARSED.clear()
    try:
        parsed: dict[str, Any] = json.loads(text)
        check_ops(parsed["ops"])
    except (ValueError, TypeError, KeyError) as exc:  # not what a sidecar commits: the keys are the truth
        raise ResyncNeeded(f"journal entry {revision} is not one a sidecar wrote ({exc}); reloading") from None
    _PARSED[revision] = (text, parsed)
    return parsed


def _entries(raw: Any) -> list[tuple[int, dict[str, Any]]]:
    """Stream entries as (revision, {at, actor, ops})."""
    out = []
    for entry_id, fields in raw:
        revision = int(entry_id.split("-", 1)[0])
        if not isinstance(fields, dict):  # a cluster pipeline answers XRANGE unparsed: [field, value, ...]
            fields = dict(zip(fields[::2], fields[1::2], strict=True))
        out.append((revision, _parse(revision, fields["entry"])))
    return out


def _raw_entries(raw: Any) -> list[tuple[int, dict[str, Any]]]:
    """Stream entries as a script returns them ([[id, [field, value, ...]], ...])."""
    out = []
    for entry_id, flat in raw:
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        revision = int(str(entry_id).split("-", 1)[0])
        out.append((revision, _parse(revision, fields["entry"])))
    return out


TOUCHED_MAX = 1000  # tokens a journal entry lists; a bigger write (an import) is journaled as "*"
EVERYTHING = orjson.dumps(["*"])


def _touched(entities: Entities) -> bytes:
    """What a commit changed, as the journal keeps it for the WRITE script."""
    tokens = entities.tokens()
    return orjson.dumps(tokens) if len(tokens) <= TOUCHED_MAX else EVERYTHING


def _fenced() -> StoreError:
    return StoreError("Redis lost writes that sidecars hold and they are writing them back; try again in a few "
                      "seconds")
