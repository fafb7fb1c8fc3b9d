"""Writes through Redis without a global lock (issue 12, item 2), on a real redis-server.

Sidecars here are in-process (sidecar.core.Sidecar on its own RedisStore, as a server builds
it), several per test, written to from many threads at once:

  * the race that must not pass: a check that depends on an entity a concurrent write changes
    (a user's role, the role policy) never commits after that write; the same interleaving on
    a store that watches only the keys its ops change ("naive") lets the wrong allow through,
    which shows that the test can fail;
  * many threads x three sidecars writing random related and unrelated member, ban, role and
    policy writes: revisions 1..N without a gap, every acknowledged write is in the journal at
    the revision it was answered with, and replaying the journal serially re-plans every write
    to exactly its ops (each check passes at its place in the log, each `before` is the state
    just before it); every sidecar's state equals that replay and a fresh load();
  * unrelated writes (distinct users, distinct groups) from many threads do not conflict;
  * a follower that missed the pub/sub hints catches up from the stream, from its last revision,
    without a full resync.
"""
from __future__ import annotations

import ast
import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis_support import RedisServer, unique, wait_until

from sidecar import groups as grp
from sidecar import management as m
from sidecar.core import Sidecar, WriteContext
from sidecar.engine import Engine
from sidecar.errors import ChatAuthzError, StoreError
from sidecar.policy import load_policy
from sidecar.readset import Entities
from sidecar.state import Op, RuntimeState, with_before
from sidecar.stores.base import BulkWritable, PlanRun, TrackedPlan
from sidecar.stores.redisstore import RedisStore
from tests.op_script import fields

REPO = Path(__file__).resolve().parents[1]
POLICY = load_policy(REPO / "policies")
PlanFn = Callable[[WriteContext], tuple[list[Op], Any]]


class NaiveStore(RedisStore):
    """What the test must catch: a store that watches only the keys the ops change (it is told
    the plan read nothing)."""

    def write_tracked(self, plan: TrackedPlan, actor: str) -> tuple[int, list[Op], list[tuple[int, list[Op]]]]:
        def blind(refresh: bool) -> PlanRun:
            run = plan(refresh)
            return PlanRun(run.ops, Entities(), run.epoch, run.revision)
        return super().write_tracked(blind, actor)


@pytest.fixture
def cluster(module_redis: RedisServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., list[Sidecar]]]:
    """cluster(n, store=RedisStore) -> n Sidecars on one fresh prefix (followers not started).

    Several Engines in one process parse Casbin matchers (ast.parse) from several threads at
    once, which CPython 3.11 can fail with "SystemError: AST constructor recursion depth
    mismatch" (gh-106905); a server has one Engine, which parses under its own lock. So here
    ast.parse takes one lock."""
    parse, parsing = ast.parse, threading.Lock()

    def locked_parse(*args: Any, **kwargs: Any) -> Any:
        with parsing:
            return parse(*args, **kwargs)
    monkeypatch.setattr(ast, "parse", locked_parse)
    prefix = unique("w") + ":"
    made: list[Sidecar] = []

    def build(n: int, store: type[RedisStore] = RedisStore) -> list[Sidecar]:
        sidecars = [Sidecar(POLICY, store(module_redis.url, prefix, timeout_s=2.0)) for _ in range(n)]
        made.extend(sidecars)
        return sidecars
    yield build
    for sidecar in made:
        sidecar.store.close()


def journal(store: Any) -> list[tuple[int, list[Op]]]:
    return store.changes_since(0)  # type: ignore[no-any-return]


def stripped(ops: list[Op]) -> list[Op]:
    return [{k: v for k, v in op.items() if k != "before"} for op in ops]


# -- the race that must not pass -----------------------------------------------------------------
RACES = ("role of the actor", "role policy", "role of the actor, by an import")  # an import: a bulk batch


def _revoke(race: str, uid: str) -> PlanFn:
    if race == "role of the actor":
        return lambda tx: m.plan_set_user_role(tx, uid, "restricted")
    return lambda tx: m.plan_set_role_permissions(tx, "default", {"joinGroup": "deny"})


def _join(guid: str, uid: str) -> PlanFn:
    return lambda tx: grp.plan_set_member(tx, guid, uid, "participant", uid)  # on behalf of uid itself: joinGroup


@pytest.mark.parametrize(("race", "kind"), [(race, kind) for race in sorted(RACES) for kind in ("tracked", "naive")
                                             if kind == "tracked" or "import" not in race])  # (*)
@pytest.mark.parametrize("moment", ["after the plan", "just before the write script"])
def test_a_check_that_a_concurrent_write_invalidates_never_commits(cluster: Callable[..., list[Sidecar]],
                                                                     race: str, moment: str, kind: str) -> None:
    """Sidecar one revokes U's right to join (U's role, or the default role's policy) while sidecar
    two handles "U joins g". The revocation commits after two planned the join (read U's right)
    and before two's write script runs. Serially, the join comes after the revocation in the log, so it must
    be refused; the naive store commits it (a wrong allow in the log), which is the point.
    (*) An import's batch is journaled as touching everything, which refuses even the naive store's
    join: the journal's tokens, not the store, are what that race tests (they fail it when the
    batch is journaled as touching nothing)."""
    store_class = RedisStore if kind == "tracked" else NaiveStore
    one, two = cluster(2, store_class)
    guid, uid = unique("g"), unique("u")
    one.write(lambda tx: grp.plan_set_group(tx, guid, unique("owner"), None), "setup")
    two.catch_up()
    fired: list[int] = []

    def revoke_once() -> None:
        if fired:
            return
        if race.endswith("by an import"):  # journaled as touching everything: any reader plans again
            store = one.store
            assert isinstance(store, BulkWritable)
            fired.append(store.write_batch([{"op": "put_user", "uid": uid, "role": "restricted"}], "import",
                                           store.revision()))
        else:
            fired.append(one.write(_revoke(race, uid), "admin").revision)

    join = _join(guid, uid)
    if moment == "after the plan":
        def plan(tx: WriteContext) -> tuple[list[Op], Any]:
            planned = join(tx)
            revoke_once()
            return planned
    else:
        plan = join
        original = two.store._try_write  # type: ignore[attr-defined]

        def late(run: PlanRun, ops: list[Op], actor: str) -> Any:
            revoke_once()  # after the plan, before the one call that checks and commits
            return original(run, ops, actor)
        two.store._try_write = late  # type: ignore[attr-defined]

    outcome: str
    try:
        done = two.write(plan, "member")
        outcome = f"committed at {done.revision}"
    except ChatAuthzError as exc:
        outcome = f"refused: {exc.code}"
    assert fired, "the revocation never ran: the interleaving was not exercised"
    log = journal(one.store)
    revoked_at = fired[0]
    joined = [rev for rev, ops in log for op in ops if op["op"] == "put_member" and op["uid"] == uid]
    state = one.store.load()
    if kind == "tracked":
        assert outcome.startswith("refused"), f"{race}, {moment}: the join {outcome} after the revocation at " \
                                              f"{revoked_at}: a wrong allow"
        assert joined == [] and state.scope_of(guid, uid) is None
    else:
        assert outcome.startswith("committed") and joined and joined[0] > revoked_at, (
            f"the naive store refused the join ({outcome}): this interleaving no longer shows the race")


# -- many writers, related and unrelated: a serial order -----------------------------------------
ROLES = ("default", "support", "restricted")
SCOPES = ("admin", "moderator", "participant")


def random_plan(rng: random.Random, users: list[str], groups_: list[str], owners: dict[str, str]
                ) -> tuple[str, PlanFn]:
    uid, guid = rng.choice(users), rng.choice(groups_)
    other = rng.choice(users)
    owner = owners[guid]
    kind = rng.choices(["role", "join", "leave", "add", "scope", "kick", "ban", "unban", "policy"],
                       weights=[4, 5, 2, 2, 3, 2, 2, 2, 2])[0]
    actor = rng.choice([owner, other, None])
    if kind == "role":
        role = rng.choice(ROLES)
        return f"role {uid}={role}", lambda tx: m.plan_set_user_role(tx, uid, role)
    if kind == "join":
        return f"{uid} joins {guid}", lambda tx: grp.plan_set_member(tx, guid, uid, "participant", uid)
    if kind == "leave":
        return f"{uid} leaves {guid}", lambda tx: grp.plan_remove_member(tx, guid, uid, uid)
    if kind == "add":
        scope = rng.choice(SCOPES)
        return f"{actor} adds {uid} to {guid} as {scope}", lambda tx: grp.plan_set_member(tx, guid, uid, scope, actor)
    if kind == "scope":
        scope = rng.choice(SCOPES)
        return f"{actor} sets {uid} in {guid} to {scope}", lambda tx: grp.plan_set_member(tx, guid, uid, scope, actor)
    if kind == "kick":
        return f"{actor} kicks {uid} from {guid}", lambda tx: grp.plan_remove_member(tx, guid, uid, actor)
    if kind == "ban":
        return f"{actor} bans {uid} from {guid}", lambda tx: grp.plan_ban(tx, guid, uid, actor)
    if kind == "unban":
        return f"{actor} unbans {uid} in {guid}", lambda tx: grp.plan_unban(tx, guid, uid, actor)
    value = rng.choice(["allow", "deny"])
    return f"default joinGroup {value}", lambda tx: m.plan_set_role_permissions(tx, "default", {"joinGroup": value})


def test_many_writers_on_three_sidecars_commit_in_a_serial_order(cluster: Callable[..., list[Sidecar]]) -> None:
    sidecars = cluster(3)
    users = [unique("u") for _ in range(8)]
    owners = {unique("g"): users[i] for i in range(3)}
    groups_ = list(owners)
    for guid, owner in owners.items():
        sidecars[0].write(lambda tx, guid=guid, owner=owner: grp.plan_set_group(tx, guid, owner, None), "setup")
    setup = sidecars[0].state.revision
    threads_n, per_thread = 12, 40
    acked: list[tuple[int, str, PlanFn]] = []
    refused: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    loads = [0]
    for sidecar in sidecars:  # a full resync during the run would mean a follower saw a gap
        real_load = sidecar.store.load

        def counted(real_load: Callable[[], RuntimeState] = real_load) -> RuntimeState:
            with lock:
                loads[0] += 1
            return real_load()
        sidecar.store.load = counted  # type: ignore[method-assign]

    def worker(index: int) -> None:
        rng = random.Random(index)
        sidecar = sidecars[index % len(sidecars)]
        for _ in range(per_thread):
            what, plan = random_plan(rng, users, groups_, owners)
            runs: list[list[Op]] = []

            def recording(tx: WriteContext, plan: PlanFn = plan, runs: list[list[Op]] = runs) -> tuple[list[Op], Any]:
                ops, result = plan(tx)
                runs.append(ops)
                return ops, result
            try:
                done = sidecar.write(recording, f"thread-{index}")
            except StoreError as exc:
                errors.append(exc)
                return
            except ChatAuthzError as exc:
                with lock:
                    refused.append(f"{what}: {exc.code}")
                continue
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
                return
            if runs[-1]:  # committed (the last run's ops): else a write that changed nothing
                with lock:
                    acked.append((done.revision, what, plan))

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "writers still running after 120 s"
    assert not errors, errors[:3]
    log = journal(sidecars[0].store)
    revisions = [rev for rev, _ in log]
    assert revisions == list(range(1, len(log) + 1)), "revisions must be 1..N with no gap and no repeat"
    assert len({rev for rev, _, _ in acked}) == len(acked), "two acknowledged writes answered with one revision"
    # replay the journal serially; every acknowledged write re-plans, at its place, to exactly its ops
    by_revision = {rev: (what, plan) for rev, what, plan in acked}
    engine, state = Engine(POLICY), RuntimeState()
    for rev, ops in log:
        assert [op["before"] for op in ops] == [with_before(state, op)["before"] for op in stripped(ops)], \
            f"revision {rev}: `before` is not the state just before it: the writes were not serial"
        if rev in by_revision:
            what, plan = by_revision.pop(rev)
            try:
                again, _ = plan(WriteContext(engine, state))
            except ChatAuthzError as exc:
                raise AssertionError(f"revision {rev} ({what}) was committed, but serially it is refused: "
                                     f"{exc.code} {exc.message} -- a wrong allow") from None
            assert again == stripped(ops), f"revision {rev} ({what}): serially it writes {again}, not {ops}"
        state.apply_all(stripped(ops), rev)
    assert not by_revision, f"acknowledged writes missing from the journal: {sorted(by_revision)[:5]}"
    loaded = sidecars[0].store.load()
    for sidecar in sidecars:
        sidecar.catch_up()
        assert fields(sidecar.state) == fields(loaded) == fields(state)
    conflicts = sum(s.store.conflicts + s.store.replans for s in sidecars)  # type: ignore[attr-defined]
    assert loads[0] == 1, f"{loads[0] - 1} full resyncs: a sidecar met a gap, or saw Redis go back"
    print(f"{len(log) - setup} commits, {len(refused)} refused, {conflicts} conflicts/replans "
          f"over {threads_n * per_thread} writes")
    assert len(log) - setup > threads_n * per_thread // 4, "too few writes committed to mean anything"


def test_concurrent_writers_on_one_group_never_lose_an_update(cluster: Callable[..., list[Sidecar]]) -> None:
    """The worst case for optimistic writes: 16 threads on 2 sidecars all writing one group's
    members (every write conflicts with every other): every one acknowledged, none lost."""
    sidecars = cluster(2)
    threads_n, per_thread = 16, 30
    results: list[list[int]] = [[] for _ in range(threads_n)]
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        sidecar = sidecars[index % 2]
        try:
            for n in range(per_thread):
                uid = f"w{index}-m{n}"
                results[index].append(sidecar.write(
                    lambda tx, uid=uid: ([{"op": "put_member", "guid": "busy", "uid": uid, "scope": "participant"}],
                                         None), f"thread-{index}").revision)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors[:3]
    total = threads_n * per_thread
    assert sorted(r for rs in results for r in rs) == list(range(1, total + 1))
    loaded = sidecars[0].store.load()
    assert loaded.members == {"busy": {f"w{i}-m{n}": "participant" for i in range(threads_n)
                                       for n in range(per_thread)}}
    for sidecar in sidecars:
        sidecar.catch_up()
        assert fields(sidecar.state) == fields(loaded)


# -- unrelated writes do not conflict ------------------------------------------------------------
def test_unrelated_writes_do_not_conflict(cluster: Callable[..., list[Sidecar]]) -> None:
    """24 threads on 3 sidecars, each on its own users and its own group (created beforehand):
    role changes and member writes through the real plans (with the engine's checks). The
    write script never finds a conflict (it compares entities, not keys), and no call is lost."""
    sidecars = cluster(3)
    threads_n, per_thread = 24, 25
    mine = {i: (unique("g"), unique("owner"), [unique("u") for _ in range(per_thread)]) for i in range(threads_n)}
    for guid, owner, _ in mine.values():
        sidecars[0].write(lambda tx, guid=guid, owner=owner: grp.plan_set_group(tx, guid, owner, None), "setup")
    for sidecar in sidecars:
        sidecar.catch_up()
    before = [(s.store.conflicts, s.store.replans) for s in sidecars]  # type: ignore[attr-defined]
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        sidecar = sidecars[index % 3]
        guid, owner, uids = mine[index]
        try:
            for n, uid in enumerate(uids):
                if n % 2:
                    sidecar.write(lambda tx, uid=uid: m.plan_set_user_role(tx, uid, "support"), "t")
                else:
                    sidecar.write(lambda tx, uid=uid: grp.plan_set_member(tx, guid, uid, "moderator", owner), "t")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors[:3]
    conflicts = sum(s.store.conflicts - b[0] for s, b in zip(sidecars, before, strict=True))  # type: ignore[attr-defined]
    replans = sum(s.store.replans - b[1] for s, b in zip(sidecars, before, strict=True))  # type: ignore[attr-defined]
    writes = threads_n * per_thread
    print(f"unrelated writes: {writes} writes, {conflicts} calls without an answer, {replans} replans")
    assert replans == 0, f"{replans} plans ran again although no write touched what another read"
    assert conflicts == 0, f"{conflicts} write calls lost their answer in {writes} unrelated writes"
    loaded = sidecars[0].store.load()
    for index, (guid, _, uids) in mine.items():
        assert {u: loaded.users.get(u) for u in uids[1::2]} == {u: "support" for u in uids[1::2]}, index
        assert all(loaded.scope_of(guid, u) == "moderator" for u in uids[0::2]), index


# -- a lost hint costs nothing -------------------------------------------------------------------
def test_a_follower_that_missed_the_hints_catches_up_from_the_stream(cluster: Callable[..., list[Sidecar]],
                                                                     module_redis: RedisServer) -> None:
    """B follows (pub/sub hints, a 30 s periodic check); A writes 20 times with its hints lost
    (published where nobody listens), then once more with a hint: B applies all 21 from the
    stream, in order, from its last revision, without a full resync."""
    a, b = cluster(2)
    b.sync = b.store.follow(b.catch_up, 30.0)
    b.start()
    try:
        follow_without_hints(a, b)
    finally:
        b.stop()


def follow_without_hints(a: Sidecar, b: Sidecar) -> None:
    wait_until(lambda: b.sync is not None and b.sync.status == "OK", 5.0, what="B's follower subscribed")
    a.write(lambda tx: m.plan_set_user_role(tx, "first", "support"), "a")
    wait_until(lambda: b.state.revision == 1, 5.0, what="B followed the first write")
    loads = [0]
    real_load = b.store.load

    def counted() -> RuntimeState:
        loads[0] += 1
        return real_load()
    b.store.load = counted  # type: ignore[method-assign]
    hint_channel = a.store.channel
    a.store.channel = unique("nobody-listens")  # type: ignore[misc]
    try:
        for n in range(20):
            a.write(lambda tx, n=n: m.plan_set_user_role(tx, f"quiet{n}", "support"), "a")
    finally:
        a.store.channel = hint_channel  # type: ignore[misc]
    time.sleep(0.3)
    assert b.state.revision == 1, "B was told of the writes whose hints were lost: the test shows nothing"
    a.write(lambda tx: m.plan_set_user_role(tx, "last", "restricted"), "a")
    wait_until(lambda: b.state.revision == 22, 5.0, what="B caught up from the stream after one hint")
    assert loads[0] == 0, "B resynced in full instead of reading the stream from its revision"
    assert fields(b.state) == fields(a.store.load())
    assert b.state.users["last"] == "restricted" and all(b.state.users[f"quiet{n}"] == "support" for n in range(20))


# -- the layout an older chatauthz wrote ---------------------------------------------------------
def test_a_redis_of_the_older_layout_is_moved_to_this_one_on_load(module_redis: RedisServer) -> None:
    """users and owners in one hash each and a hash journal (d0e48c4 and before): the first load
    moves them (users/owners into their buckets, the journal into the stream), then reads them.
    (Keys already renamed under their hash tag, as docs/distributed.md says to do first.)"""
    prefix = "{" + unique("old") + "}:"
    admin = module_redis.client()
    ops1: list[Op] = [{"op": "put_user", "uid": "u1", "role": "support"}, {"op": "put_group", "guid": "g1", "owner": "o1"}]
    ops2: list[Op] = [{"op": "put_member", "guid": "g1", "uid": "u1", "scope": "moderator"}]
    admin.hset(prefix + "users", "u1", "support")
    admin.sadd(prefix + "roleusers:support", "u1")
    admin.hset(prefix + "owners", "g1", "o1")
    admin.hset(prefix + "members:g1", "u1", "moderator")
    admin.set(prefix + "rev", 2)
    admin.set(prefix + "epoch", "old-epoch")
    admin.hset(prefix + "journal", mapping={str(r): json.dumps({"at": 1.0, "actor": "t", "ops": ops})
                                            for r, ops in ((1, ops1), (2, ops2))})
    store = RedisStore(module_redis.url, prefix, timeout_s=2.0)
    try:
        state = store.load()
        assert (state.revision, state.epoch) == (2, "old-epoch")
        assert state.users == {"u1": "support"} and state.owners == {"g1": "o1"}
        assert state.members == {"g1": {"u1": "moderator"}}
        assert store.changes_since(0) == [(1, ops1), (2, ops2)]
        assert admin.type(prefix + "journal") == "stream" and not admin.exists(prefix + "users", prefix + "owners")
        assert admin.get(prefix + "layout") == "2"
        # and it is written to as any other: the next revision, role index and all
        sidecar = Sidecar(POLICY, store)
        assert sidecar.write(lambda tx: m.plan_set_user_role(tx, "u1", "restricted"), "t").revision == 3
        assert store.load().users == {"u1": "restricted"}
        # an older sidecar writing its `users` hash again: refused, not half read
        admin.hset(prefix + "users", "u2", "support")
        with pytest.raises(StoreError) as refused:
            store.load()
        assert refused.value.code == "ERR_STORE_LAYOUT"
    finally:
        store.close()
