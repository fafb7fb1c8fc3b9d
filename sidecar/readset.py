"""What a write plan read and what its ops change, as entities: so that a store can make a write
conflict only with writes to what it depends on (the Redis store watches exactly those keys).

A plan never lists what it reads: Sidecar.write hands it a ReadView instead of the state. The
view passes every read through to the state (under the same lock, so the plan still sees one
revision) and notes the entity it touched:

  users[uid], role_of, assigned         that user's role         owners[guid], owner_of  that group's owner
  members[guid], scope_of, members_of   that group's members     bans[guid], is_banned, bans_of  its bans
  overrides[guid]                       its scope overrides
  roles, role_permissions, restricted,  "the role policy": one coarse entity (role writes are
  policy_generation                     rare; the engine reads policy_generation on every decision)

Reading a whole table (iterating users or owners, len(), values()) notes all of it; iterating
the members, bans or overrides of every group, and reading any attribute the view does not know
(a field added to RuntimeState later, groups_of), notes "everything": that write then conflicts
with every other write, as every write did before. So a plan cannot forget a key: what the view
cannot name precisely it names coarsely. The engine decides on the view too (check_as); it
compiles its Casbin lines from the underlying state (`underlying`), which is sound because a
decision in group g only matches lines of g's overrides (read through the view) and of the role
policy (read through policy_generation).

written_by(ops) names what the ops change, in the same terms; Entities.touches says whether two
sets meet, and Entities.tokens spells a set for the Redis store's write script, which tells the
same in Lua. Pure: no I/O.
"""
from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from sidecar.state import Op, RuntimeState

V = TypeVar("V")


@dataclass
class Entities:
    """A set of entities of the runtime state (read by a plan, or changed by ops)."""
    users: set[str] = field(default_factory=set)
    owners: set[str] = field(default_factory=set)
    members: set[str] = field(default_factory=set)
    bans: set[str] = field(default_factory=set)
    overrides: set[str] = field(default_factory=set)
    policy: bool = False        # roles, their permissions, restricted features
    all_users: bool = False     # every user's role
    all_owners: bool = False    # every group's owner
    everything: bool = False    # anything at all: conflicts with every write

    def __bool__(self) -> bool:
        return bool(self.users or self.owners or self.members or self.bans or self.overrides or self.policy
                    or self.all_users or self.all_owners or self.everything)

    def touches(self, other: Entities) -> bool:
        """Do the two sets share an entity?"""
        if not self or not other:
            return False
        if self.everything or other.everything or (self.policy and other.policy):
            return True
        if (self.all_users and (other.users or other.all_users)) or (other.all_users and self.users):
            return True
        if (self.all_owners and (other.owners or other.all_owners)) or (other.all_owners and self.owners):
            return True
        return bool(self.users & other.users or self.owners & other.owners or self.members & other.members
                    or self.bans & other.bans or self.overrides & other.overrides)

    def tokens(self) -> list[str]:
        """This set as the strings a commit is journaled with and the Redis write script compares
        (its Lua mirrors touches): "*" everything, "policy", "users" / "owners" (all of them),
        "u:<uid>", "o:<guid>", "m:<guid>", "b:<guid>", "v:<guid>" (overrides)."""
        if self.everything:
            return ["*"]
        out = [f"u:{uid}" for uid in self.users]
        out += [f"o:{guid}" for guid in self.owners]
        out += [f"m:{guid}" for guid in self.members]
        out += [f"b:{guid}" for guid in self.bans]
        out += [f"v:{guid}" for guid in self.overrides]
        out += [name for name, on in (("policy", self.policy), ("users", self.all_users), ("owners", self.all_owners))
                if on]
        return out

    def update(self, other: Entities) -> None:
        self.users |= other.users
        self.owners |= other.owners
        self.members |= other.members
        self.bans |= other.bans
        self.overrides |= other.overrides
        self.policy |= other.policy
        self.all_users |= other.all_users
        self.all_owners |= other.all_owners
        self.everything |= other.everything


ROLE_POLICY_OPS = frozenset({"put_role", "delete_role", "set_role_permissions", "unset_role_permission",
                             "set_restricted_features"})


def written_by(ops: list[Op]) -> Entities:
    """The entities these ops change (an op this module does not know: everything)."""
    out = Entities()
    for op in ops:
        name = op.get("op")
        if name in ROLE_POLICY_OPS:
            out.policy = True
            if name == "delete_role":
                out.all_users = True  # its users go back to the default role
        elif name in ("put_user", "delete_user"):
            out.users.add(op["uid"])
        elif name == "put_group":
            out.owners.add(op["guid"])
        elif name == "delete_group":
            guid = op["guid"]
            out.owners.add(guid)
            out.members.add(guid)
            out.bans.add(guid)
            out.overrides.add(guid)
        elif name in ("put_member", "delete_member"):
            out.members.add(op["guid"])
        elif name == "ban":
            out.members.add(op["guid"])
            out.bans.add(op["guid"])
        elif name == "unban":
            out.bans.add(op["guid"])
        elif name in ("set_scope_permissions", "unset_scope_permission"):
            out.overrides.add(op["guid"])
        else:
            out.everything = True
    return out


class _Table(Mapping[str, V]):
    """One table of the state, read through: a key read notes that entity, a whole read the table."""

    __slots__ = ("_data", "_keys", "_view", "_whole")

    def __init__(self, data: Mapping[str, V], keys: set[str], view: ReadView, whole: str) -> None:
        self._data, self._keys, self._view, self._whole = data, keys, view, whole

    def __getitem__(self, key: str) -> V:
        self._note(key)
        return self._data[key]

    def get(self, key: str, default: Any = None) -> Any:
        self._note(key)
        return self._data.get(key, default)

    def __contains__(self, key: object) -> bool:
        self._note(key)
        return key in self._data

    def _note(self, key: object) -> None:
        if isinstance(key, str):
            self._keys.add(key)
        elif key is not None:  # no entity has such an id; noted as all of the table all the same
            self._all()

    def _all(self) -> None:
        setattr(self._view.reads, self._whole, True)

    def __iter__(self) -> Iterator[str]:
        self._all()
        return iter(self._data)

    def __len__(self) -> int:
        self._all()
        return len(self._data)


class ReadView:
    """Stands in for a RuntimeState in a write plan (see the module docstring). Read-only: a
    plan returns ops, it never applies them."""

    def __init__(self, state: RuntimeState) -> None:
        self._state = state
        self.reads = Entities()
        self.revision = state.revision  # the revision the plan reads at (the caller holds the state's lock)
        self.epoch = state.epoch
        self.users: _Table[str] = _Table(state.users, self.reads.users, self, "all_users")
        self.owners: _Table[str] = _Table(state.owners, self.reads.owners, self, "all_owners")
        self.members: _Table[dict[str, str]] = _Table(state.members, self.reads.members, self, "everything")
        self.bans: _Table[set[str]] = _Table(state.bans, self.reads.bans, self, "everything")
        self.overrides: _Table[dict[str, dict[str, Any]]] = _Table(state.overrides, self.reads.overrides, self,
                                                                   "everything")

    def as_state(self) -> RuntimeState:
        """This view, typed as what plans and the engine take."""
        return cast(RuntimeState, self)

    # the role policy: one coarse entity
    @property
    def roles(self) -> dict[str, dict[str, Any]]:
        self.reads.policy = True
        return self._state.roles

    @property
    def role_permissions(self) -> dict[str, dict[str, Any]]:
        self.reads.policy = True
        return self._state.role_permissions

    @property
    def restricted(self) -> dict[str, frozenset[str]]:
        self.reads.policy = True
        return self._state.restricted

    @property
    def policy_generation(self) -> int:
        self.reads.policy = True
        return self._state.policy_generation

    # the accessors plans and the engine read through (RuntimeState's; a working set's too)
    @property
    def whole(self) -> bool:
        return self._state.whole

    def role_of(self, uid: str) -> str:
        self.reads.users.add(uid)
        return self._state.role_of(uid)

    def assigned(self, uid: str) -> bool:
        self.reads.users.add(uid)
        return self._state.assigned(uid)

    def users_with_role(self, role: str) -> int:
        self.reads.all_users = True
        return self._state.users_with_role(role)

    def owner_of(self, guid: str) -> str | None:
        self.reads.owners.add(guid)
        return self._state.owner_of(guid)

    def group_ids(self) -> Iterable[str]:
        self.reads.all_owners = True
        return self._state.group_ids()

    def members_of(self, guid: str) -> Mapping[str, str]:
        self.reads.members.add(guid)
        return self._state.members_of(guid)

    def bans_of(self, guid: str) -> Collection[str]:
        self.reads.bans.add(guid)
        return self._state.bans_of(guid)

    def scope_of(self, guid: str, uid: str) -> str | None:
        self.reads.members.add(guid)
        return self._state.scope_of(guid, uid)

    def is_banned(self, guid: str, uid: str) -> bool:
        self.reads.bans.add(guid)
        return self._state.is_banned(guid, uid)

    def apply(self, op: Op) -> None:
        raise TypeError("a write plan returns ops; it never applies them to the state")

    def apply_all(self, ops: list[Op], revision: int) -> None:
        raise TypeError("a write plan returns ops; it never applies them to the state")

    def __getattr__(self, name: str) -> Any:
        """Anything else (groups_of, a field added later): passed through, read as everything."""
        if name.startswith("__") or name in ("_state", "reads"):
            raise AttributeError(name)
        self.reads.everything = True
        return getattr(self._state, name)


def underlying(state: RuntimeState) -> RuntimeState:
    """The state itself, or the state a ReadView reads (what the engine compiles its lines from)."""
    view: Any = state
    return view._state if isinstance(view, ReadView) else state
