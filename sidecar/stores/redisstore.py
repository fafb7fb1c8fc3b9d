"""The distributed store: runtime state in Redis, shared by every sidecar on every host.

Keys, all under a prefix so that several apps can share one Redis, inside one hash tag
(prefix chatauthz: -> keys {chatauthz}:rev, ...: redisconn.keyspace) so that a cluster-mode
Redis holds them in one slot and the transactions below run there unchanged:
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
This is the only module that talks to Redis for state; its errors become StoreError. The
client (one URL, Sentinel's primary, a cluster) comes from sidecar.stores.redisconn, which also
makes every transaction WAIT for redis_min_replicas after its EXEC.
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

import redis
from redis.commands.core import Script
from redis.exceptions import RedisClusterException

from sidecar.errors import StoreError
from sidecar.state import Op, RuntimeState, check_ops
from sidecar.stores.base import DataLoss, Follower, Plan, ResyncNeeded
from sidecar.stores.redisconn import RedisSpec, connect, is_cluster, keyspace, unwrap

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
        self.recovery_grace_s = recovery_grace_s  # after a loss, how long claims are gathered
        self.claimant = uuid.uuid4().hex
        # The newest (epoch, revision) this sidecar has seen, kept on disk across its restarts: a
        # Redis found below it after a restart of both lost writes, though no state remembers them.
        name = hashlib.sha256(f"{self.url}|{prefix}".encode()).hexdigest()[:16]
        self.seen_file = seen_dir / f"redis-seen-{name}.json" if seen_dir is not None else None
        self.seen = self._read_seen()
        self._put_user = _Script(self, PUT_USER)
        self._delete_user = _Script(self, DELETE_USER)
        self._delete_role_users = _Script(self, DELETE_ROLE_USERS)
        self._claim_script = _Script(self, CLAIM)

    def key(self, name: str) -> str:
        return self.keyspace + name

    def pattern(self, name: str) -> str:
        """A SCAN MATCH pattern for the keys that start with key(name)."""
        return "".join("\\" + c if c in "*?[]\\" else c for c in self.key(name)) + "*"

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

    # -- reads -----------------------------------------------------------------------------
    def revision(self) -> int:
        with _mapped("read the revision"):
            return int(self.client.get(self.key("rev")) or 0)

    def load(self) -> RuntimeState:
        """Everything, without blocking Redis: scan, then replay what was written meanwhile."""
        with _mapped("load the runtime state"):
            self._refuse_the_old_layout()
            self.client.set(self.key("epoch"), uuid.uuid4().hex, nx=True)  # a new or emptied Redis
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

    def _refuse_the_old_layout(self) -> None:
        """Keys written before the hash tag (prefix + name) would look like an empty Redis."""
        if self.keyspace == self.prefix or self.client.exists(self.key("epoch")):
            return
        if self.client.exists(self.prefix + "epoch"):
            raise StoreError(f"Redis holds this app's state in the key layout of before hash tags "
                             f"({self.prefix}rev, ...), and none in the current one ({self.key('rev')}, ...); "
                             "rename the keys before starting (docs/distributed.md, 'Upgrading the key layout')")

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
            self._delete_role_users(keys=[key("users"), key("roleusers:" + op["role"])], client=pipe)
        elif name == "set_role_permissions":
            pipe.hset(key("roleperms:" + op["role"]), mapping={k: json.dumps(v) for k, v in op["values"].items()})
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
            pipe.hset(*self.owner_field(op["guid"]), op["owner"])
        elif name == "delete_group":
            guid = op["guid"]
            pipe.hdel(*self.owner_field(guid))
            pipe.delete(self.members_key(guid), self.bans_key(guid), self.overrides_key(guid))
        elif name == "put_member":
            pipe.hset(self.members_key(op["guid"]), op["uid"], op["scope"])
        elif name == "delete_member":
            pipe.hdel(self.members_key(op["guid"]), op["uid"])
        elif name == "ban":
            pipe.hdel(self.members_key(op["guid"]), op["uid"])
            pipe.sadd(self.bans_key(op["guid"]), op["uid"])
        elif name == "unban":
            pipe.srem(self.bans_key(op["guid"]), op["uid"])
        elif name == "set_scope_permissions":
            values = {f"{op['scope']} {k}": json.dumps(v) for k, v in op["values"].items()}
            pipe.hset(self.overrides_key(op["guid"]), mapping=values)
        elif name == "unset_scope_permission":
            pipe.hdel(self.overrides_key(op["guid"]), f"{op['scope']} {op['key']}")
        else:
            raise ValueError(f"unknown op {name!r}")

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
        found = self._claim_script(keys=keys, args=[epoch or "", revision, self.claimant, state.revision,
                                                    RECOVERY_TTL_S])
        if found is None:  # Redis moved since we looked (say, another sidecar wrote back): look again
            return replace(loss, detail=f"{loss.detail}; Redis changed meanwhile, looking again")
        now, since, flat = float(found[0]), float(found[1]), found[2]
        waited = now - since
        live = [(int(rev), who) for who, value in zip(flat[::2], flat[1::2], strict=True)
                for rev, at in [value.split()] if now - float(at) <= RECOVERY_TTL_S]
        best = max(live, default=(state.revision, self.claimant))
        if waited < self.recovery_grace_s:
            return replace(loss, detail=f"{loss.detail}; gathering claims for "
                                        f"{self.recovery_grace_s - waited:.1f}s more before writing back")
        if best != (state.revision, self.claimant):
            return replace(loss, detail=f"{loss.detail}; a sidecar at revision {best[0]} writes its state back")
        return self._write_back(state, loss, epoch, revision)

    def _write_back(self, state: RuntimeState, loss: DataLoss, epoch: str | None, revision: int) -> DataLoss:
        """Our whole state, at our revision, under a new epoch, if Redis has not moved meanwhile."""
        new = uuid.uuid4().hex
        step = {"epoch": new, "parent": state.epoch, "fork": state.revision, "lost": [loss.first, loss.last],
                "at": time.time()}
        lineage = [*self.lineage, step][-LINEAGE_KEEP:]
        with self.client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(self.key("rev"), self.key("epoch"))  # type: ignore[no-untyped-call]
                if pipe.get(self.key("epoch")) != epoch or int(pipe.get(self.key("rev")) or 0) != revision:
                    return replace(loss, detail=f"{loss.detail}; Redis changed meanwhile, looking again")
                stale = list(self.client.scan_iter(match=self.pattern(""), count=10_000))
                pipe.multi()
                if stale:
                    pipe.delete(*stale)
                self._put_all(pipe, state)
                pipe.set(self.key("rev"), state.revision)
                pipe.set(self.key("epoch"), new)
                pipe.rpush(self.key("epochs"), *(json.dumps(s) for s in lineage))
                pipe.publish(self.channel, json.dumps({"epoch": new, "revision": state.revision}))
                pipe.execute()
            except redis.WatchError:
                return replace(loss, detail=f"{loss.detail}; Redis changed meanwhile, looking again")
        self.lineage = lineage
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
        for name, members in sets.items():
            for start in range(0, len(members), 10_000):
                pipe.sadd(name, *members[start:start + 10_000])

    def close(self) -> None:
        self.client.close()


class _mapped:
    """Turns Redis errors into StoreError (503), keeping the cause."""

    def __init__(self, doing: str) -> None:
        self.doing = doing

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        if isinstance(exc, (redis.RedisError, RedisClusterException)) and not isinstance(exc, redis.WatchError):
            raise StoreError(f"Redis is unavailable; could not {self.doing}: {exc}") from exc
