"""The store interface: persist ops atomically with one revision counter, and replay them.

Store is what every store does. What only some can do is a capability, checked with
isinstance, never by class: Polled (cheap "did anyone commit?", read on each request: the
embedded file), Subscribable (tells its followers of changes: Redis), SelfChecking, BulkWritable,
ReadTracking (a write conflicts only with writes to what its plan read: Redis), EntityReader (a
working set can sit on it).
"""
from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Literal, NamedTuple, Protocol, runtime_checkable

import orjson

from sidecar.errors import ConflictError, StoreError
from sidecar.readset import Entities
from sidecar.state import OPS, POLICY_OPS, Op, RuntimeState

Plan = Callable[[], list[Op]]


class PlanRun(NamedTuple):
    """One run of a tracked plan: its ops, the entities it read (sidecar.readset), and the
    epoch and revision of the state it read them in."""
    ops: list[Op]
    reads: Entities
    epoch: str
    revision: int


TrackedPlan = Callable[[bool], PlanRun]  # refresh: catch up with the store before planning


class ResyncNeeded(Exception):
    """The journal cannot bring this reader up to date (gap, trimmed, or the store lost its data)."""


class RecoveryPending(StoreError):
    """The store lost writes this sidecar holds; the sidecars are settling who writes them back."""


@dataclass(frozen=True)
class DataLoss:
    """The store no longer holds writes this sidecar had applied: revisions first..last of epoch.

    status: "pending" (not written back yet: writes are refused), "written" (this sidecar wrote
    its state back as new_epoch) or "followed" (another sidecar did, or the store moved on).
    Revisions up to restored_to are back under new_epoch; restored_to+1..last are gone for good.
    """
    epoch: str
    first: int
    last: int
    status: Literal["pending", "written", "followed"]
    new_epoch: str | None = None
    restored_to: int | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "first": self.first, "last": self.last, "status": self.status,
                "newEpoch": self.new_epoch, "restoredTo": self.restored_to, "detail": self.detail}


class Store(Protocol):
    def load(self) -> RuntimeState:
        """The whole runtime state at the current revision."""

    def changes_since(self, revision: int) -> list[tuple[int, list[Op]]]:
        """Committed writes after `revision`, oldest first, as (revision, ops)."""

    def journal(self, since: int, offset: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
        """The change log after `since`: (total, entries {revision, at, actor, ops})."""

    def recover(self, state: RuntimeState) -> DataLoss | None:
        """After ResyncNeeded: None if the store still holds `state`'s history; else what it
        lost, written back under a new epoch when this sidecar holds the most (see DataLoss)."""

    def write(self, plan: Plan, actor: str) -> tuple[int, list[Op]]:
        """Run plan() inside one exclusive transaction and commit its ops with a new revision.

        plan may read (through changes_since) and raise to refuse; then nothing is written.
        Ops apply in order and each is absolute, so a store needs no reader's memory.
        Returns (revision, ops); with no ops nothing is written and the revision is unchanged.
        """

    def close(self) -> None: ...


@runtime_checkable
class Polled(Protocol):
    """A store other processes write to that a reader checks cheaply on each request."""

    def changed(self, revision: int) -> bool:
        """Cheap check: may a commit past `revision` exist (made by another process)?"""


class Follower(Protocol):
    """Keeps one sidecar current with a Subscribable store (a Background)."""

    status: str   # OK | DEGRADED | NOT_READY
    message: str

    def start(self) -> None: ...

    def stop(self) -> None: ...


@runtime_checkable
class Subscribable(Protocol):
    """A store shared by sidecars that tells them of changes: a sidecar on it is kept current
    by its follower and never waits on the store to decide."""

    def follow(self, catch_up: Callable[[], None], interval_s: float) -> Follower:
        """A follower (not started) that calls catch_up on every change, tick and reconnect."""


class Facts(NamedTuple):
    """The entity facts a decision (or a plan) reads: users' roles, groups' owners, and
    (guid, uid) memberships with their bans."""
    users: list[str]
    groups: list[str]
    memberships: list[tuple[str, str]]


class FactsRead(NamedTuple):
    """A store's answer for Facts, all at one revision: roles (None: no role assigned), owners
    (None: no such group), memberships as (scope or None, banned)."""
    epoch: str
    revision: int
    roles: list[str | None]
    owners: list[str | None]
    memberships: list[tuple[str | None, bool]]


@runtime_checkable
class EntityReader(Protocol):
    """A store a working set (sidecar.workingset) can sit on: the policy part loads whole, the
    entities are read a few at a time, with indexed reads."""

    def load_policy(self) -> RuntimeState:
        """The state at the current revision with roles, permissions, restricted features and
        overrides, and no users, owners, members or bans."""

    def read_facts(self, facts: Facts) -> FactsRead:
        """Every fact asked for, at one revision, in one round trip."""

    def members_of(self, guid: str) -> dict[str, str]: ...

    def bans_of(self, guid: str) -> set[str]: ...

    def groups_of(self, uid: str) -> set[str]:
        """The groups uid is a member or the owner of."""

    def group_ids(self) -> list[str]: ...

    def users_with_role(self, role: str) -> int: ...


@runtime_checkable
class BulkWritable(Protocol):
    """A store that commits a bulk load's batch in one go (`chatauthz import`)."""

    def write_batch(self, ops: list[Op], actor: str, expect_revision: int) -> int:
        """Commit ops (checked against the registry: check_ops) as one revision with its journal
        entry, published as any write is, only if the store is still at expect_revision: else
        ConflictError ERR_STORE_CHANGED and nothing is written. Returns the new revision (with
        no ops, the current one). The ops may be applied in bulk, not one by one, but the
        result is what applying them in order gives."""


    # how many ops write_runs takes best in one call (an import gives it batches up to this many)
    bulk_call_ops: int

    def write_runs(self, batches: list[Runs], actor: str, expect_revision: int,
                   journals: list[str] | None = None) -> list[int]:
        """write_batch for batches of ops already as runs (no op dicts): all of them or none,
        each one revision with its journal entry (a batch without ops: none). Returns the
        revisions. journals: each batch's runs_json, when the caller made them already."""


# The ops a bulk write takes as rows; none is a policy op (written_by(...).policy is False).
BULK_OPS = ("put_user", "put_group", "put_member", "ban")
assert POLICY_OPS.isdisjoint(BULK_OPS)
Row = tuple[str, ...]  # an op's fields, in the order of the registry (OPS[name].fields)
Runs = list[tuple[str, list[Row]]]  # ops of BULK_OPS in order: runs of one op name each
_TEMPLATES = {name: "{" + ",".join([f'"op":"{name}"', *(f'"{f}":"%s"' for f in OPS[name].fields)]) + "}"
              for name in BULK_OPS}


def runs_of(ops: list[Op]) -> Runs | None:
    """The ops as runs when every one is of BULK_OPS with string fields (else None)."""
    runs: Runs = []
    for name, group in itertools.groupby(ops, key=itemgetter("op")):
        if name not in _TEMPLATES:
            return None
        rows = list(map(itemgetter(*OPS[name].fields), group))
        if not all(type(value) is str for row in rows for value in row):
            return None
        runs.append((name, rows))
    return runs


def ops_of_runs(runs: Runs) -> list[Op]:
    """The ops, as dicts."""
    return [{"op": name, **dict(zip(OPS[name].fields, row, strict=True))} for name, rows in runs for row in rows]


def runs_json(runs: Runs) -> str:
    """The JSON of the runs' ops (a journal's `ops`), as orjson.dumps(ops_of_runs(runs)) gives it:
    written from the templates, a run at a time, when no value needs escaping (no quote, no
    backslash, nothing unprintable: ids, roles and scopes never do); else by orjson."""
    parts, quotes = [], 0
    for name, rows in runs:
        if rows:
            template = _TEMPLATES[name]
            parts.append(",".join([template] * len(rows)) % tuple(itertools.chain.from_iterable(rows)))
            quotes += template.count('"') * len(rows)
    text = "[" + ",".join(parts) + "]"
    if text.count('"') != quotes or "\\" in text or not text.isprintable():
        return orjson.dumps(ops_of_runs(runs)).decode()
    return text


def store_changed(current: int | None, expected: int) -> ConflictError:
    """write_batch's refusal: the store is at `current` (None: written to meanwhile), not `expected`."""
    found = f"at revision {current}" if current is not None else "written to meanwhile"
    return ConflictError(f"the store is {found}, not at revision {expected}: someone else wrote to it",
                         code="ERR_STORE_CHANGED")


@runtime_checkable
class ReadTracking(Protocol):
    """A store whose writes conflict only with writes to what their plan read, so that the writes
    of one process need not wait for each other (Sidecar.write does not serialize them)."""

    def write_tracked(self, plan: TrackedPlan, actor: str) -> tuple[int, list[Op], list[tuple[int, list[Op]]]]:
        """As Store.write, but plan(refresh) also says what it read and at which revision: the write
        commits only if none of those entities (nor those its ops change) was changed by a commit
        after that revision; else the plan runs again with refresh=True (catch up first). Every
        committed write still gets the next revision: the journal is one serial order.

        Returns (revision, ops, between): between, the commits after the plan's revision and
        before this one, oldest first, when the store has them at hand (else fewer: the caller
        catches up)."""


@runtime_checkable
class SelfChecking(Protocol):
    """A store that can say whether it may be trusted (the embedded file: still ours? disk ok?)."""

    def check(self) -> str | None:
        """Raise StoreError when the store must not be used (readiness fails); return a warning
        when it serves but needs an operator (readiness "degraded"), else None."""
