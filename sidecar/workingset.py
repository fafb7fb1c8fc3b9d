"""A bounded working set: the policy part of the runtime state whole, the entities as a cache.

Roles, permissions, restricted features and per-group overrides are held whole, as in
RuntimeState. Users' roles, group owners, memberships and bans are a cache of at most
`capacity` facts over an EntityReader store, negative answers included ("no role", "no such
group", "not a member"): a flood of ids that do not exist stays within the bound.

The cache is two generations: a fact is found in the hot one, or moved there from the cold one;
when the hot one holds capacity/2 facts it becomes the cold one and the old cold one is dropped
(least recently used, roughly, with one dict lookup per hit). That happens only as facts read
from the store come in, so what one answer needs is never dropped before it is used: the bound
is `capacity` plus the facts of one answer.

A fact the state does not hold raises MissingFacts: the caller (sidecar.core) reads what is
missing from the store in one round trip, outside its lock, and absorbs it. A read made at
revision R is kept current by the ops after R: absorb() applies the ops of (R, revision] that
this state already applied to the facts it takes in (ops are absolute, so applying a suffix
again is harmless); a read newer than the state waits for the state to catch up; a read older
than the ops kept in memory is read again. So every decision is the full state's decision at
this state's revision. Pure: the store is called only by the views' collection reads.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal, NoReturn

from sidecar.state import OPS, POLICY_OPS, Op, RuntimeState
from sidecar.stores.base import EntityReader, Facts, FactsRead

NO_ROLE = "\x00no-role"    # a user who holds no role (so: default)
NO_GROUP = "\x00no-group"  # no such group
NOT_MEMBER = ""            # a membership code: neither a member nor banned
BANNED = "!"               # a membership code's prefix: banned (a scope after it only if also a member)
RECENT_OPS = 50_000        # ops kept to bring reads up to date (reads older are made again)
ENTITY_OPS = frozenset({"put_user", "delete_user", "delete_role", "put_group", "delete_group", "put_member",
                        "delete_member", "ban", "unban"})


class MissingFacts(Exception):
    """The state does not hold these facts: read them from the store and absorb them."""

    def __init__(self, facts: Facts) -> None:
        super().__init__(f"not in the working set: {facts}")
        self.facts = facts


class _NotHeld(dict[str, Any]):
    """Stands for a whole entity table, which a working set does not hold: any use is a bug."""

    def _refuse(self, *_: Any, **__: Any) -> NoReturn:
        raise TypeError("a working set holds no whole table of users, owners, members or bans; "
                        "read through role_of, owner_of, scope_of, is_banned, members_of, ...")

    __getitem__ = __contains__ = __iter__ = __len__ = get = keys = values = items = _refuse
    setdefault = pop = __setitem__ = update = _refuse


class _Generation:
    __slots__ = ("users", "owners", "members", "size")

    def __init__(self) -> None:
        self.users: dict[str, str] = {}                 # uid -> role | NO_ROLE
        self.owners: dict[str, str] = {}                # guid -> owner | NO_GROUP
        self.members: dict[str, dict[str, str]] = {}    # guid -> uid -> membership code
        self.size = 0


def membership_code(scope: str | None, banned: bool) -> str:
    return (BANNED if banned else NOT_MEMBER) + (scope or "")


class WorkingSet(RuntimeState):
    """RuntimeState's answers from the policy part whole and a bounded cache of entity facts."""

    def __init__(self, base: RuntimeState, reader: EntityReader, capacity: int) -> None:
        super().__init__(revision=base.revision, epoch=base.epoch, policy_generation=base.policy_generation,
                         roles=base.roles, role_permissions=base.role_permissions, restricted=base.restricted,
                         overrides=base.overrides)
        self.users = self.owners = _NotHeld()
        self.members = self.bans = _NotHeld()
        self.reader = reader
        self.capacity = max(2, capacity)
        self._hot, self._cold = _Generation(), _Generation()
        self._recent: deque[tuple[int, list[Op]]] = deque()
        self._recent_ops = 0
        self._recent_from = base.revision  # ops after this revision are in _recent
        self._fetch: Callable[[Facts], FactsRead] | None = None  # see fetching()

    @property
    def whole(self) -> bool:
        return False

    @contextmanager
    def fetching(self, fetch: Callable[[Facts], FactsRead]) -> Iterator[None]:
        """Meanwhile a miss is read at once through fetch (a write's plan, a view: they read
        what they find as they go), not raised; a read the state cannot take still raises."""
        self._fetch = fetch
        try:
            yield
        finally:
            self._fetch = None

    def _missed(self, facts: Facts) -> None:
        """A fact is not held: read it now when fetching (else, or if it cannot be taken, raise)."""
        if self._fetch is None or self.absorb(facts, self._fetch(facts), facts) != "ok":
            raise MissingFacts(facts)

    # -- the accessors (RuntimeState's interface) -----------------------------------------
    def role_of(self, uid: str) -> str:
        role = self._hot.users.get(uid)
        if role is None:
            role = self._user(uid)
        return "default" if role is NO_ROLE else role

    def assigned(self, uid: str) -> bool:
        role = self._hot.users.get(uid)
        return (role if role is not None else self._user(uid)) is not NO_ROLE

    def owner_of(self, guid: str) -> str | None:
        owner = self._hot.owners.get(guid)
        if owner is None:
            owner = self._owner(guid)
        return None if owner is NO_GROUP else owner

    def scope_of(self, guid: str, uid: str) -> str | None:
        code = self._code(guid, uid)
        if code[:1] == BANNED:
            code = code[1:]
        return code or None

    def is_banned(self, guid: str, uid: str) -> bool:
        return self._code(guid, uid)[:1] == BANNED

    # collections are read from the store as they are now (not cached; list questions and views)
    def members_of(self, guid: str) -> Mapping[str, str]:
        return self.reader.members_of(guid)

    def bans_of(self, guid: str) -> Collection[str]:
        return self.reader.bans_of(guid)

    def groups_of(self, uid: str) -> frozenset[str] | set[str]:
        return self.reader.groups_of(uid)

    def group_ids(self) -> Iterable[str]:
        return self.reader.group_ids()

    def users_with_role(self, role: str) -> int:
        return self.reader.users_with_role(role)

    # -- the cache ---------------------------------------------------------------------------
    @property
    def size(self) -> int:
        """Facts held (at most capacity)."""
        return self._hot.size + self._cold.size

    def missing(self, facts: Facts) -> Facts:
        """Those of `facts` this state does not hold. Those it holds in the cold generation move
        to the hot one, so that making room for the missing ones cannot drop them."""
        hot, cold = self._hot, self._cold
        users = []
        for uid in dict.fromkeys(facts.users):
            if uid not in hot.users:
                if uid in cold.users:
                    self._user(uid)
                else:
                    users.append(uid)
        groups = []
        for guid in dict.fromkeys(facts.groups):
            if guid not in hot.owners:
                if guid in cold.owners:
                    self._owner(guid)
                else:
                    groups.append(guid)
        pairs = []
        for guid, uid in dict.fromkeys(facts.memberships):
            if uid not in hot.members.get(guid, _EMPTY):
                if uid in cold.members.get(guid, _EMPTY):
                    self._code(guid, uid)
                else:
                    pairs.append((guid, uid))
        return Facts(users, groups, pairs)

    def absorb(self, facts: Facts, read: FactsRead, keep: Facts | None = None) -> Literal["ok", "behind", "stale"]:
        """Take in what the store answered for `facts`. "behind": the read is newer than this
        state (catch up, then absorb it again); "stale": it is older than the ops kept (or of
        another epoch): read again. Making room never drops a fact of `keep` (what the answer
        being read for needs)."""
        if read.epoch != self.epoch or read.revision < self._recent_from:
            return "stale"
        if read.revision > self.revision:
            return "behind"
        suffix = [ops for revision, ops in self._recent if revision > read.revision]
        if self._hot.size >= self.capacity // 2:  # only here: what one answer read stays until it is used
            dropped, self._cold, self._hot = self._cold, self._hot, _Generation()
            if keep is not None:
                self._keep(dropped, keep)
        for uid, role in zip(facts.users, read.roles, strict=True):
            self._put("users", uid, NO_ROLE if role is None else role)
        for guid, owner in zip(facts.groups, read.owners, strict=True):
            self._put("owners", guid, NO_GROUP if owner is None else owner)
        for (guid, uid), (scope, banned) in zip(facts.memberships, read.memberships, strict=True):
            self._put_code(guid, uid, membership_code(scope, banned))
        for ops in suffix:  # bring what was read up to this state's revision
            for op in ops:
                if op["op"] in ENTITY_OPS:
                    self._apply_entity(op)
        return "ok"

    def _keep(self, dropped: _Generation, keep: Facts) -> None:
        """Put back the facts of `keep` that a rotation just dropped."""
        for uid in keep.users:
            if uid in dropped.users:
                self._put("users", uid, dropped.users[uid])
        for guid in keep.groups:
            if guid in dropped.owners:
                self._put("owners", guid, dropped.owners[guid])
        for guid, uid in keep.memberships:
            code = dropped.members.get(guid, _EMPTY).get(uid)
            if code is not None:
                self._put_code(guid, uid, code)

    def _user(self, uid: str) -> str:
        role = self._cold.users.pop(uid, None)
        if role is None:
            self._missed(Facts([uid], [], []))
            return self._hot.users[uid]
        self._cold.size -= 1
        self._put("users", uid, role)
        return role

    def _owner(self, guid: str) -> str:
        owner = self._cold.owners.pop(guid, None)
        if owner is None:
            self._missed(Facts([], [guid], []))
            return self._hot.owners[guid]
        self._cold.size -= 1
        self._put("owners", guid, owner)
        return owner

    def _code(self, guid: str, uid: str) -> str:
        group = self._hot.members.get(guid)
        code = group.get(uid) if group is not None else None
        if code is not None:
            return code
        cold = self._cold.members.get(guid)
        code = cold.pop(uid, None) if cold is not None else None
        if code is None:
            self._missed(Facts([], [], [(guid, uid)]))
            return self._hot.members[guid][uid]
        self._cold.size -= 1
        if not cold:
            del self._cold.members[guid]
        self._put_code(guid, uid, code)
        return code

    def _put(self, kind: Literal["users", "owners"], key: str, value: str) -> None:
        cold: dict[str, str] = getattr(self._cold, kind)
        if key in cold:  # one copy only: the hot one
            del cold[key]
            self._cold.size -= 1
        hot: dict[str, str] = getattr(self._hot, kind)
        if key not in hot:
            self._grow()  # may make a new hot generation
            hot = getattr(self._hot, kind)
        hot[key] = value

    def _grow(self) -> None:
        """One more fact in the hot generation."""
        self._hot.size += 1

    def _put_code(self, guid: str, uid: str, code: str) -> None:
        cold = self._cold.members.get(guid)
        if cold is not None and uid in cold:
            del cold[uid]
            self._cold.size -= 1
            if not cold:
                del self._cold.members[guid]
        group = self._hot.members.get(guid)
        if group is None or uid not in group:
            self._grow()
            group = self._hot.members.setdefault(guid, {})
        group[uid] = code

    def _generations(self) -> Iterator[_Generation]:
        yield self._hot
        yield self._cold

    # -- applying ops ----------------------------------------------------------------------
    def apply_all(self, ops: list[Op], revision: int) -> None:
        super().apply_all(ops, revision)
        self._recent.append((revision, ops))
        self._recent_ops += len(ops)
        while self._recent_ops > RECENT_OPS and len(self._recent) > 1:
            dropped, old = self._recent.popleft()
            self._recent_ops -= len(old)
            self._recent_from = dropped

    def apply(self, op: Op) -> None:
        name = op["op"]
        if name not in OPS:
            raise ValueError(f"unknown op {name!r}")
        if name in ENTITY_OPS:
            self._apply_entity(op)
        if name == "delete_role":
            for table in (self.roles, self.role_permissions, self.restricted):
                table.pop(op["role"], None)
        elif name == "delete_group":
            self.overrides.pop(op["guid"], None)
        elif name in POLICY_OPS:
            getattr(self, "_" + name)(op)
        if name in POLICY_OPS:
            self.policy_generation += 1

    def _apply_entity(self, op: Op) -> None:
        """The op's effect on the facts held (a fact not held stays not held)."""
        name = op["op"]
        for gen in self._generations():
            if name == "put_user" or name == "delete_user":
                if op["uid"] in gen.users:
                    gen.users[op["uid"]] = op["role"] if name == "put_user" else NO_ROLE
            elif name == "delete_role":
                for uid in [u for u, role in gen.users.items() if role == op["role"]]:
                    gen.users[uid] = NO_ROLE
            elif name == "put_group":
                if op["guid"] in gen.owners:
                    gen.owners[op["guid"]] = op["owner"]
            elif name == "delete_group":
                if op["guid"] in gen.owners:
                    gen.owners[op["guid"]] = NO_GROUP
                group = gen.members.get(op["guid"])
                if group is not None:
                    for uid in group:
                        group[uid] = NOT_MEMBER
            else:
                group = gen.members.get(op["guid"])
                code = group.get(op["uid"]) if group is not None else None
                if group is None or code is None:
                    continue
                banned = code[:1] == BANNED
                if name == "put_member":
                    group[op["uid"]] = membership_code(op["scope"], banned)
                elif name == "delete_member":
                    group[op["uid"]] = membership_code(None, banned)
                elif name == "ban":
                    group[op["uid"]] = BANNED
                else:  # unban
                    group[op["uid"]] = code[1:] if banned else code


_EMPTY: Mapping[str, str] = {}
