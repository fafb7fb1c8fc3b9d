"""One store contract, run against every store: the embedded SQLite file, Redis (a real
redis-server on a free port, one per module; tests that kill, pause or flush it get their own),
Redis found through Sentinel (a primary, a replica and three sentinels) and a cluster-mode Redis
(three nodes): the `kit` fixture runs each contract test once per kind.

The contract, for every store: a write commits all its ops or none and bumps the one revision
counter by one, with who and when in the journal; a plan that raises, or an op that fails, leaves
nothing written; a write with no ops changes nothing; load() equals replaying the journal and
equals the ops applied in memory, for every op kind; two handles on one store (two workers, two
sidecars) see each other's commits; a Sidecar plans a write on caught-up state and a refused write
changes nothing; concurrent writers on two sidecars never lose an update.

Then what only one store does. SQLite: the shared counter behind changed() and the data_version
backstop. Redis: key prefixes isolate apps on one Redis, a write publishes {epoch, revision},
WATCH/MULTI retries, every key is inside the prefix's one hash tag (one cluster slot), a write
while Redis is down or hung fails with StoreError (503) and changes
nothing, a gap or a new epoch asks for a resync, and a sidecar that holds state writes it back
after Redis lost its data (reseed, recovery from an older snapshot).
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis_support import ClusterSetup, RedisServer, SentinelSetup, unique

from sidecar import metrics
from sidecar.core import Sidecar, WriteContext
from sidecar.engine import AuthzRequest
from sidecar.errors import ChatAuthzError, StoreError
from sidecar.policy import load_policy
from sidecar.state import Op, RuntimeState
from sidecar.stores.base import DataLoss, Facts, RecoveryPending, ResyncNeeded, Store
from sidecar.stores.redisconn import RedisSpec, has_hash_tag, keyspace
from sidecar.stores.redisstore import RedisStore
from sidecar.stores.sqlite import SQLiteStore
from sidecar.validation import Token
from tests.op_script import EVERY_OP, FIELDS, fields, in_memory

REPO = Path(__file__).resolve().parents[1]
POLICY = load_policy(REPO / "policies")
TABLES = ("meta", "journal", "roles", "role_permissions", "restricted", "users", "groups", "members", "bans",
          "overrides")


# -- the two stores ----------------------------------------------------------------------------
class StoreKit:
    """One store under test: opens handles onto the same data, reads that data raw, and builds a
    Sidecar on a handle as the server does. Every handle opened is closed at teardown."""

    name = ""

    def __init__(self) -> None:
        self.opened: list[Any] = []

    def open(self) -> Any:
        store = self._open()
        self.opened.append(store)
        return store

    def _open(self) -> Any:
        raise NotImplementedError

    def dump(self) -> Any:
        """Everything the store holds, raw (to compare before and after)."""
        raise NotImplementedError

    def revision(self, store: Any) -> int:
        raise NotImplementedError

    def sidecar(self, store: Any) -> Sidecar:
        raise NotImplementedError

    def catch_up(self, sidecar: Sidecar) -> None:
        """What brings a sidecar up to date with the others' commits in this mode."""
        raise NotImplementedError

    def close(self) -> None:
        for store in self.opened:
            store.close()


class SQLiteKit(StoreKit):
    name = "sqlite"

    def __init__(self, db: Path) -> None:
        super().__init__()
        self.db = db

    def _open(self) -> SQLiteStore:
        return SQLiteStore(self.db)

    def dump(self) -> dict[str, list[tuple[Any, ...]]]:
        return dump_tables(self.db)

    def revision(self, store: SQLiteStore) -> int:
        return store.load().revision

    def sidecar(self, store: SQLiteStore) -> Sidecar:
        return Sidecar(POLICY, store)  # embedded mode: requests refresh from the shared counter

    def catch_up(self, sidecar: Sidecar) -> None:
        sidecar.refresh()


class RedisKit(StoreKit):
    """A Redis of any kind: one server (its URL), Sentinel-fronted or a cluster (a RedisSpec);
    `admin` makes a client of the test's own onto the same data (the primary, or the cluster)."""

    name = "redis"

    def __init__(self, target: str | RedisSpec, admin: Callable[[], Any], key_prefix: str) -> None:
        super().__init__()
        self.target, self.admin, self.prefix = target, admin, key_prefix

    def _open(self) -> RedisStore:
        return RedisStore(self.target, self.prefix, timeout_s=0.5)

    def dump(self) -> dict[str, Any]:
        client = self.admin()
        try:
            found = dump(client, self.prefix)
            assert all(has_hash_tag(key) for key in found)
            return found
        finally:
            client.close()

    def revision(self, store: RedisStore) -> int:
        return store.revision()

    def sidecar(self, store: RedisStore) -> Sidecar:
        return core(store)

    def catch_up(self, sidecar: Sidecar) -> None:
        sidecar.catch_up()  # what the sync thread does on a message or every sync interval


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSetup]:
    setup = SentinelSetup(tmp_path_factory.mktemp("sentinel-store"))
    try:
        yield setup.start()
    finally:
        setup.stop()


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSetup]:
    setup = ClusterSetup(tmp_path_factory.mktemp("cluster-store"))
    try:
        yield setup.start()
    finally:
        setup.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of the test's own, for tests that kill, pause or flush it."""
    server = RedisServer(tmp_path)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def prefix() -> str:
    """A prefix spelled with its hash tag, so `prefix + name` is the key (keyspace takes it as is)."""
    return "{" + unique("t") + "}:"


def redis_kit(request: pytest.FixtureRequest, kind: str) -> RedisKit:
    key_prefix = unique("t") + ":"  # as an operator spells it: the store puts it in a hash tag
    if kind == "redis":
        server: RedisServer = request.getfixturevalue("module_redis")
        return RedisKit(server.url, lambda: server.client(), key_prefix)
    if kind == "sentinel":
        setup: SentinelSetup = request.getfixturevalue("shared_sentinel")
        return RedisKit(setup.spec(timeout_s=0.5), lambda: setup.primary().client(), key_prefix)
    cluster: ClusterSetup = request.getfixturevalue("shared_cluster")
    return RedisKit(cluster.spec(timeout_s=0.5), lambda: cluster.node_client(keyspace(key_prefix)), key_prefix)


@pytest.fixture(params=["sqlite", *[pytest.param(kind, marks=pytest.mark.redis)
                                    for kind in ("redis", "sentinel", "cluster")]])
def kit(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreKit]:
    """Each contract test runs once per store; a Redis starts only when a case of its kind runs."""
    made: StoreKit = SQLiteKit(tmp_path / "state.db") if request.param == "sqlite" else redis_kit(request, request.param)
    yield made
    made.close()


@pytest.fixture
def sqlite_kit(tmp_path: Path) -> Iterator[SQLiteKit]:
    made = SQLiteKit(tmp_path / "state.db")
    yield made
    made.close()


@pytest.fixture
def open_store() -> Iterator[Callable[..., RedisStore]]:
    """Factory: open_store(server, prefix) -> RedisStore (0.5 s timeouts); all closed at teardown."""
    opened: list[RedisStore] = []

    def open_one(server: RedisServer, key_prefix: str) -> RedisStore:
        store = RedisStore(server.url, key_prefix, timeout_s=0.5)
        opened.append(store)
        return store
    yield open_one
    for store in opened:
        store.close()


# -- helpers ---------------------------------------------------------------------------------
def replay(store: Store) -> RuntimeState:
    state = RuntimeState()
    for revision, ops in store.changes_since(0):
        state.apply_all(ops, revision)
    return state


def write(store: Store, state: RuntimeState, ops: list[Op], actor: str = "tester") -> int:
    """One committed write of `ops`, keeping `state` (the caller's mirror) caught up like a Sidecar."""
    revision, written = store.write(lambda: [dict(op) for op in ops], actor)
    if written:
        state.apply_all(written, revision)
    return revision


def dump_tables(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(db)
    try:
        return {table: sorted(conn.execute(f"SELECT * FROM {table}").fetchall()) for table in TABLES}  # noqa: S608
    finally:
        conn.close()


def dump(client: redis.Redis, key_prefix: str) -> dict[str, Any]:
    """Every key under the prefix (inside its hash tag) with its value (the channel is not a key)."""
    out: dict[str, Any] = {}
    space = keyspace(key_prefix)
    pattern = "".join("\\" + c if c in "*?[]\\" else c for c in space) + "*"
    for key in sorted(client.scan_iter(match=pattern, count=1000)):
        kind = client.type(key)
        if kind == "hash":
            out[key] = client.hgetall(key)
        elif kind == "string":
            out[key] = client.get(key)
        else:
            out[key] = (kind, None)
    return out


def core(store: RedisStore) -> Sidecar:
    """A Sidecar as in distributed mode (the store is Subscribable), its follower not started."""
    return Sidecar(POLICY, store)


# == the contract: every store ==================================================================
# -- writes ----------------------------------------------------------------------------------
def test_write_commits_ops_and_bumps_revision_by_one(kit: StoreKit) -> None:
    store = kit.open()
    state = store.load()
    assert state.revision == 0 and fields(state) == fields(RuntimeState())
    ops: list[Op] = [{"op": "put_user", "uid": "u1", "role": "support"},
                     {"op": "put_group", "guid": "g1", "owner": "u1"}]
    revision, written = store.write(lambda: [dict(op) for op in ops], "tester")
    assert (revision, written) == (1, ops)
    assert kit.revision(store) == 1
    loaded = store.load()
    assert loaded.revision == 1
    assert loaded.users == {"u1": "support"} and loaded.owners == {"g1": "u1"}
    assert store.changes_since(0) == [(1, ops)]
    state.apply_all(written, revision)
    assert write(store, state, [{"op": "put_user", "uid": "u2", "role": "default"}]) == 2
    assert [rev for rev, _ in store.changes_since(0)] == [1, 2]
    assert [rev for rev, _ in store.changes_since(1)] == [2]
    assert store.changes_since(2) == []
    # the journal carries who and when
    total, entries = store.journal(0, 0, 10)
    assert total == 2
    assert [e["revision"] for e in entries] == [1, 2]
    assert all(e["actor"] == "tester" and abs(e["at"] - time.time()) < 60 for e in entries)


def test_a_plan_that_raises_writes_nothing(kit: StoreKit) -> None:
    store = kit.open()
    state = store.load()
    write(store, state, EVERY_OP[:12])
    before, before_state = kit.dump(), fields(store.load())

    class Refused(Exception):
        pass

    def plan() -> list[Op]:
        raise Refused("no")
    with pytest.raises(Refused):
        store.write(plan, "tester")
    assert kit.dump() == before
    assert fields(store.load()) == before_state
    assert kit.revision(store) == 1
    # the store is still usable afterwards
    assert write(store, state, [{"op": "put_user", "uid": "after", "role": "support"}]) == 2


def test_a_failing_op_rolls_back_the_ops_before_it(kit: StoreKit) -> None:
    store = kit.open()
    state = store.load()
    bad: list[Op] = [{"op": "put_user", "uid": "u1", "role": "support"}, {"op": "no_such_op"}]
    before = kit.dump()
    with pytest.raises(ValueError, match="unknown op 'no_such_op'"):  # the op registry refuses it, first write
        store.write(lambda: [dict(op) for op in bad], "tester")
    assert kit.dump() == before
    unwritable: list[Op] = [{"op": "put_user", "uid": "u1", "role": "support"},
                            {"op": "put_role", "role": "r", "record": {"role": "r", "name": object()}}]
    with pytest.raises(TypeError):  # well shaped, but it fails while being written
        store.write(lambda: [dict(op) for op in unwritable], "tester")
    assert kit.dump() == before
    assert kit.revision(store) == 0
    # the store is still usable afterwards, and a failure after a commit rolls back the same way
    assert write(store, state, [{"op": "put_user", "uid": "u0", "role": "support"}]) == 1
    before = kit.dump()
    with pytest.raises(ValueError):
        store.write(lambda: [dict(op) for op in bad], "tester")
    assert kit.dump() == before
    assert kit.revision(store) == 1
    assert write(store, state, [{"op": "put_user", "uid": "u1", "role": "support"}]) == 2


def test_a_write_with_no_ops_changes_nothing(kit: StoreKit) -> None:
    store = kit.open()
    state = store.load()
    write(store, state, EVERY_OP[:3])
    before = kit.dump()
    assert store.write(lambda: [], "tester") == (1, [])
    assert kit.dump() == before
    assert kit.revision(store) == 1
    assert store.load().revision == 1


# -- load equals replay ----------------------------------------------------------------------
def test_load_after_reopen_equals_replaying_the_journal(kit: StoreKit) -> None:
    store = kit.open()
    state = store.load()
    for start in range(0, len(EVERY_OP), 4):
        write(store, state, EVERY_OP[start:start + 4])
    store.close()
    reopened = kit.open()
    loaded, replayed = reopened.load(), replay(reopened)
    assert loaded.revision == replayed.revision == -(-len(EVERY_OP) // 4)
    assert fields(loaded) == fields(replayed)
    assert fields(loaded) == fields(in_memory(EVERY_OP, loaded.revision)) == fields(state)


def test_every_op_kind_round_trips(kit: StoreKit) -> None:
    """One op per write: after each, load() equals the ops applied in memory (this exercises the
    ops the Redis store expands from the caller's state: delete_role, delete_group, set/unset role
    and scope permissions)."""
    store = kit.open()
    state = store.load()
    for index, op in enumerate(EVERY_OP, start=1):
        assert write(store, state, [op]) == index
        loaded = store.load()
        assert fields(loaded) == fields(in_memory(EVERY_OP[:index], index)), f"after op {index}: {op}"
    final = fields(store.load())
    assert all(final[name] for name in FIELDS), final  # something of every table survives
    assert final["restricted"]["restricted"] == frozenset()  # an empty runtime list is kept
    assert "temp" not in final["roles"] and "u2" not in final["users"] and "u8" not in final["users"]
    assert "support" not in final["role_permissions"]
    assert "g3" not in final["owners"] and "g3" not in final["bans"] and "g3" not in final["overrides"]
    # a new store object (another worker or sidecar) loads and replays to the same thing
    other = kit.open()
    assert fields(other.load()) == fields(replay(other)) == final == fields(state)


def test_the_entity_reads_of_a_working_set_equal_the_state_after_every_op_kind(kit: StoreKit) -> None:
    """What a working set reads on a miss (read_facts, one round trip) and what views read
    (members_of, bans_of, groups_of, group_ids, users_with_role) equal the whole state, after
    each op kind (the collections after every third), for known ids, for ids that do not exist, for one id asked twice, and for
    users, groups and pairs of an op that undid them; with the store's epoch and revision."""
    store = kit.open()
    state = store.load()
    for index, op in enumerate(EVERY_OP, start=1):
        write(store, state, [op])
        whole = in_memory(EVERY_OP[:index], index)
        uids = sorted({*whole.users, *(u for m in whole.members.values() for u in m),
                       *(u for b in whole.bans.values() for u in b), "u2", "u8", "nobody"})
        guids = sorted({*whole.owners, *whole.members, *whole.bans, "g3", "nogroup"})
        facts = Facts([*uids, uids[0]], [*guids, guids[0]], [(g, u) for g in guids for u in uids] + [(guids[0], uids[0])])
        read = store.read_facts(facts)
        assert (read.epoch, read.revision) == (store.load().epoch, index)
        assert read.roles == [whole.users.get(u) for u in facts.users], f"after op {index}: {op}"
        assert read.owners == [whole.owners.get(g) for g in facts.groups], f"after op {index}: {op}"
        assert read.memberships == [(whole.scope_of(g, u), whole.is_banned(g, u)) for g, u in facts.memberships], \
            f"after op {index}: {op}"
        if index % 3 and index != len(EVERY_OP):
            continue  # the collection reads (a round trip each) after every third op and the last
        for guid in guids:
            assert dict(store.members_of(guid)) == whole.members.get(guid, {}) and \
                set(store.bans_of(guid)) == set(whole.bans.get(guid, ())), (index, guid)
        for uid in uids:
            assert set(store.groups_of(uid)) == set(whole.groups_of(uid)), (index, uid)
        assert sorted(store.group_ids()) == sorted(whole.owners), index
        for role in {*whole.users.values(), "agent", "nobody"}:
            assert store.users_with_role(role) == whole.users_with_role(role), (index, role)


# -- two handles on one store ------------------------------------------------------------------
def test_two_handles_see_each_others_commits(kit: StoreKit) -> None:
    first, second = kit.open(), kit.open()
    first.load()
    second.load()
    first.write(lambda: [{"op": "put_user", "uid": "u1", "role": "support"}], "worker-1")
    assert second.changes_since(0) == [(1, [{"op": "put_user", "uid": "u1", "role": "support"}])]
    assert second.load().users == {"u1": "support"}
    # and the other way round
    second.write(lambda: [{"op": "put_user", "uid": "u2", "role": "restricted"}], "worker-2")
    assert first.changes_since(1) == [(2, [{"op": "put_user", "uid": "u2", "role": "restricted"}])]
    assert first.load().revision == 2
    assert kit.revision(first) == kit.revision(second) == 2


def test_sidecars_on_two_stores_see_each_others_writes(kit: StoreKit) -> None:
    one, two = kit.sidecar(kit.open()), kit.sidecar(kit.open())
    request = AuthzRequest("u1", "createGroup")
    assert one.decide(request)["allowed"] is True
    assert two.decide(request)["allowed"] is True

    revision = one.write(lambda tx: ([{"op": "put_user", "uid": "u1", "role": "support"}], None), "worker-1").revision
    assert revision == 1
    assert one.state.users == {"u1": "support"}
    kit.catch_up(two)
    assert two.state.revision == 1
    assert two.state.users == {"u1": "support"}
    decision = two.decide(request)
    assert decision["allowed"] is False and decision["revision"] == 1

    # policy ops travel too, and invalidate the other sidecar's Casbin gates
    two.write(lambda tx: ([{"op": "set_role_permissions", "role": "support",
                            "values": {"createGroup": "allow"}}], None), "worker-2")
    kit.catch_up(one)
    assert one.state.revision == 2
    decision = one.decide(request)
    assert decision["allowed"] is True and decision["revision"] == 2
    assert "runtime" in decision["reason"]

    # both converge on the store's state
    for sidecar in (one, two):
        assert fields(sidecar.state) == fields(sidecar.store.load())


def test_sidecar_write_plans_on_caught_up_state(kit: StoreKit) -> None:
    one, two = kit.sidecar(kit.open()), kit.sidecar(kit.open())
    one.write(lambda tx: ([{"op": "put_group", "guid": "g1", "owner": "o"}], None), "worker-1")
    seen: list[dict[str, str]] = []

    def plan(tx: WriteContext) -> tuple[list[Op], None]:
        seen.append(dict(tx.state.owners))
        return [{"op": "put_member", "guid": "g1", "uid": "o", "scope": "admin"}], None
    assert two.write(plan, "worker-2").revision == 2
    assert seen == [{"g1": "o"}]
    kit.catch_up(one)
    assert one.state.members == {"g1": {"o": "admin"}}


def test_sidecar_write_that_refuses_changes_nothing(kit: StoreKit) -> None:
    sidecar = kit.sidecar(kit.open())
    sidecar.write(lambda tx: ([{"op": "put_user", "uid": "u1", "role": "support"}], None), "w")
    before = kit.dump()

    def plan(tx: WriteContext) -> tuple[list[Op], None]:
        raise ValueError("refused")
    with pytest.raises(ValueError):
        sidecar.write(plan, "w")
    assert kit.dump() == before
    assert sidecar.state.revision == 1
    assert sidecar.write(lambda tx: ([], None), "w").revision == 1


# -- concurrency -----------------------------------------------------------------------------
def test_concurrent_writers_on_two_sidecars_never_lose_an_update(kit: StoreKit) -> None:
    """4 threads on 2 sidecars (each sidecar writes one at a time, so 2 writers race in the store),
    1000 put_member writes: every one acknowledged, revisions 1..1000 with no gap, all stored."""
    sidecars = [kit.sidecar(kit.open()), kit.sidecar(kit.open())]
    threads_n, per_thread = 4, 250
    attempts = [0]
    results: list[list[int]] = [[] for _ in range(threads_n)]
    errors: list[BaseException] = []
    attempts_lock = threading.Lock()

    def worker(index: int) -> None:
        sidecar = sidecars[index % 2]
        try:
            for n in range(per_thread):
                uid = f"w{index}-m{n}"

                def plan(tx: WriteContext, uid: str = uid) -> tuple[list[Op], None]:
                    with attempts_lock:
                        attempts[0] += 1
                    return [{"op": "put_member", "guid": "busy", "uid": uid, "scope": "participant"}], None
                results[index].append(sidecar.write(plan, f"thread-{index}").revision)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "writers still running after 60 s"
    assert not errors, (f"{len(errors)} of {threads_n * per_thread} writes failed with two writers on a healthy "
                        f"{kit.name} store: {errors[:3]}")
    total = threads_n * per_thread
    every_revision = sorted(r for rs in results for r in rs)
    assert every_revision == list(range(1, total + 1)), "revisions must be 1..N with no gap and no repeat"
    for rs in results:
        assert rs == sorted(rs), "one thread's writes are acknowledged in order"
    expected = {f"w{i}-m{n}": "participant" for i in range(threads_n) for n in range(per_thread)}
    store = sidecars[0].store
    loaded = store.load()
    assert loaded.revision == total
    assert loaded.members == {"busy": expected}
    journal = store.changes_since(0)
    assert [rev for rev, _ in journal] == list(range(1, total + 1))
    assert sorted(op["uid"] for _, ops in journal for op in ops) == sorted(expected)
    for sidecar in sidecars:
        sidecar.catch_up()
        assert fields(sidecar.state) == fields(loaded)
    print(f"{kit.name}: {total} writes took {attempts[0]} plan attempts ({attempts[0] - total} retries)")


# == SQLite only ================================================================================
def test_two_stores_on_one_file_see_each_others_commits_through_the_counter(sqlite_kit: SQLiteKit) -> None:
    """changed(): the shared counter says whether a reader has something to catch up."""
    first, second = sqlite_kit.open(), sqlite_kit.open()
    assert second.changed(0) is False  # nothing committed past revision 0
    first.write(lambda: [{"op": "put_user", "uid": "u1", "role": "support"}], "worker-1")
    assert second.changed(0) is True   # the shared counter says revision 1 exists
    assert second.changed(1) is False  # a reader at revision 1 has nothing to catch up
    assert second.changes_since(0) == [(1, [{"op": "put_user", "uid": "u1", "role": "support"}])]
    assert second.load().users == {"u1": "support"}
    # and the other way round
    second.write(lambda: [{"op": "put_user", "uid": "u2", "role": "restricted"}], "worker-2")
    assert first.changed(1) is True
    assert first.load().revision == 2


def test_a_commit_the_counter_missed_is_found_by_the_backstop(sqlite_kit: SQLiteKit) -> None:
    """A writer killed between COMMIT and... (or any writer bypassing the counter): readers still
    find the commit through SQLite's data_version within the backstop interval."""
    reader = sqlite_kit.open()
    assert reader.changed(0) is False
    conn = sqlite3.connect(sqlite_kit.db)
    conn.execute("UPDATE meta SET value = 1 WHERE key = 'revision'")
    conn.commit()
    conn.close()
    deadline = time.monotonic() + 2
    while not reader.changed(0):
        assert time.monotonic() < deadline, "the backstop never noticed the commit"
        time.sleep(0.05)


# == Redis only =================================================================================
@pytest.mark.redis
def test_a_write_with_no_ops_publishes_nothing_and_a_write_publishes_its_revision(
        module_redis: RedisServer, open_store: Any, prefix: str) -> None:
    store, admin = open_store(module_redis, prefix), module_redis.client()
    state = store.load()
    write(store, state, EVERY_OP[:3])
    before = dump(admin, prefix)
    pubsub = admin.pubsub(ignore_subscribe_messages=True)
    try:
        pubsub.subscribe(store.channel)
        assert pubsub.get_message(timeout=1.0) is None  # the subscribe confirmation, ignored
        assert store.write(lambda: [], "tester") == (1, [])
        assert dump(admin, prefix) == before
        assert store.revision() == 1
        assert pubsub.get_message(timeout=0.3) is None
        # a real write publishes {epoch, revision}, and only that (a hint: followers read the journal)
        write(store, state, [{"op": "put_user", "uid": "u1", "role": "support"}])
        message = pubsub.get_message(timeout=2.0)
        assert message is not None and json.loads(message["data"]) == {"epoch": store.epoch, "revision": 2}
    finally:
        pubsub.close()


@pytest.mark.redis
def test_key_prefixes_isolate_two_apps_on_one_redis(module_redis: RedisServer, open_store: Any) -> None:
    first_prefix, second_prefix = unique("app1") + ":", unique("app2") + ":"
    first, second = open_store(module_redis, first_prefix), open_store(module_redis, second_prefix)
    first_state, second_state = first.load(), second.load()
    admin = module_redis.client()
    keys_before = set(admin.scan_iter(count=1000))
    for op in EVERY_OP[:20]:
        write(first, first_state, [op])
    write(second, second_state, [{"op": "put_user", "uid": "u1", "role": "restricted"}])
    write(second, second_state, [{"op": "put_group", "guid": "g1", "owner": "u1"}])
    assert first.revision() == 20 and second.revision() == 2
    assert fields(first.load()) == fields(in_memory(EVERY_OP[:20], 20))
    assert fields(second.load()) == fields(in_memory([{"op": "put_user", "uid": "u1", "role": "restricted"},
                                                      {"op": "put_group", "guid": "g1", "owner": "u1"}], 2))
    new_keys = set(admin.scan_iter(count=1000)) - keys_before
    assert new_keys, "the writes created no keys"
    first_space, second_space = first.key(""), second.key("")
    assert (first_space, second_space) == ("{" + first_prefix[:-1] + "}:", "{" + second_prefix[:-1] + "}:")
    assert all(k.startswith((first_space, second_space)) for k in new_keys), new_keys
    assert {k for k in new_keys if k.startswith(first_space)} and {k for k in new_keys if k.startswith(second_space)}
    assert first.channel != second.channel
    # flushing one app's keys leaves the other whole
    admin.delete(*[k for k in new_keys if k.startswith(first_space)])
    assert fields(second.load()) == fields(second_state)


# -- Redis: concurrency -------------------------------------------------------------------------
@pytest.mark.redis
def test_a_write_that_loses_the_watch_race_retries_on_fresh_state(module_redis: RedisServer, open_store: Any,
                                                                  prefix: str) -> None:
    """Another writer commits between our WATCH and our EXEC: ours retries, nothing is lost."""
    ours, theirs = core(open_store(module_redis, prefix)), core(open_store(module_redis, prefix))
    ours.write(lambda tx: ([{"op": "set_role_permissions", "role": "support", "values": {"blockUser": "allow"}}],
                           None), "ours")
    seen: list[dict[str, Any]] = []

    def plan(tx: WriteContext) -> tuple[list[Op], None]:
        seen.append(dict(tx.state.role_permissions.get("support", {})))
        if len(seen) == 1:  # the first attempt: someone else writes the same role meanwhile
            theirs.write(lambda tx: ([{"op": "set_role_permissions", "role": "support",
                                        "values": {"createGroup": "allow"}}], None), "theirs")
        return [{"op": "set_role_permissions", "role": "support", "values": {"editProfile": "deny"}}], None
    assert ours.write(plan, "ours").revision == 3
    assert len(seen) == 2, seen  # planned twice: the first EXEC was refused
    assert seen[1] == {"blockUser": "allow", "createGroup": "allow"}
    expected = {"blockUser": "allow", "createGroup": "allow", "editProfile": "deny"}
    loaded = ours.store.load()
    assert loaded.role_permissions["support"] == expected
    assert ours.state.role_permissions["support"] == expected
    assert [rev for rev, _ in ours.store.changes_since(0)] == [1, 2, 3]


# -- Redis: failures ----------------------------------------------------------------------------
@pytest.mark.redis
def test_a_write_while_redis_is_down_raises_store_error_and_changes_nothing(own_redis: RedisServer,
                                                                           open_store: Any, prefix: str) -> None:
    sidecar = core(open_store(own_redis, prefix))
    sidecar.write(lambda tx: ([{"op": "put_user", "uid": "u1", "role": "support"}], None), "t")
    before_state = fields(sidecar.state)
    own_redis.kill()
    started = time.monotonic()
    with pytest.raises(StoreError) as caught:
        sidecar.write(lambda tx: ([{"op": "put_user", "uid": "u2", "role": "support"}], None), "t")
    assert time.monotonic() - started < 5.0
    assert caught.value.status == 503 and caught.value.code == "ERR_STORE_UNAVAILABLE"
    assert "Redis" in caught.value.message
    assert fields(sidecar.state) == before_state
    # decisions still come from memory while Redis is gone
    assert sidecar.decide(AuthzRequest("u1", "createGroup"))["allowed"] is False


@pytest.mark.redis
def test_a_write_while_redis_hangs_raises_store_error_and_is_not_applied_later(own_redis: RedisServer,
                                                                               open_store: Any,
                                                                               prefix: str) -> None:
    """SIGSTOP: the commands sit in Redis's socket buffers; after SIGCONT nothing may apply them."""
    sidecar = core(open_store(own_redis, prefix))
    sidecar.write(lambda tx: ([{"op": "put_user", "uid": "u1", "role": "support"}], None), "t")
    admin = own_redis.client()
    before, before_state = dump(admin, prefix), fields(sidecar.state)
    own_redis.pause()
    try:
        started = time.monotonic()
        with pytest.raises(StoreError) as caught:
            sidecar.write(lambda tx: ([{"op": "put_user", "uid": "u2", "role": "support"}], None), "t")
        elapsed = time.monotonic() - started
        assert caught.value.status == 503
        assert elapsed < 5.0, f"a write against a hung Redis took {elapsed:.1f}s to fail (timeout 0.5 s)"
    finally:
        own_redis.resume()
    time.sleep(0.5)  # let Redis drain whatever the client had sent
    assert dump(admin, prefix) == before
    assert fields(sidecar.state) == before_state
    # and once Redis answers again the next write goes through as revision 2
    assert sidecar.write(lambda tx: ([{"op": "put_user", "uid": "u3", "role": "support"}], None), "t").revision == 2
    assert sidecar.store.load().users == {"u1": "support", "u3": "support"}


@pytest.mark.redis
def test_changes_since_asks_for_a_resync_on_a_gap_or_a_new_epoch(module_redis: RedisServer, open_store: Any,
                                                                 prefix: str) -> None:
    store, admin = open_store(module_redis, prefix), module_redis.client()
    state = store.load()
    for n in range(3):
        write(store, state, [{"op": "put_user", "uid": f"u{n}", "role": "support"}])
    admin.xdel(prefix + "journal", "2-0")
    with pytest.raises(ResyncNeeded):
        store.changes_since(0)
    assert [rev for rev, _ in store.changes_since(2)] == [3]
    admin.set(prefix + "epoch", "someone-else")
    with pytest.raises(ResyncNeeded):
        store.changes_since(3)
    reloaded = store.load()  # a full load adopts the new epoch
    assert reloaded.revision == 3 and store.changes_since(3) == []


# -- Redis: reseed ------------------------------------------------------------------------------
@pytest.mark.redis
def test_after_flushall_a_sidecar_writes_its_state_back_and_others_load_it(own_redis: RedisServer,
                                                                          open_store: Any,
                                                                          prefix: str) -> None:
    holder, other = core(open_store(own_redis, prefix)), core(open_store(own_redis, prefix))
    for start in range(0, len(EVERY_OP), 3):
        ops = EVERY_OP[start:start + 3]
        holder.write(lambda tx, ops=ops: ([dict(op) for op in ops], None), "t")
    other.catch_up()
    expected = fields(holder.state)
    assert fields(other.state) == expected
    old_epoch = holder.store.epoch
    admin = own_redis.client()
    admin.flushall()
    holder.catch_up()  # sees the loss, writes its state back, reloads it
    assert fields(holder.state) == expected
    assert holder.store.epoch != old_epoch
    assert admin.get(prefix + "rev") == str(expected["revision"])
    other.catch_up()  # sees a new epoch: a full resync to the reseeded state
    assert fields(other.state) == expected
    fresh = open_store(own_redis, prefix)
    assert fields(fresh.load()) == expected
    # and the next write continues from there, visible to everyone
    revision = other.write(lambda tx: ([{"op": "put_user", "uid": "late", "role": "restricted"}], None), "t").revision
    assert revision == expected["revision"] + 1
    holder.catch_up()
    assert holder.state.users["late"] == "restricted" and fields(holder.state) == fields(fresh.load())


@pytest.mark.redis
def test_reseed_only_when_redis_lost_its_data_and_only_once(own_redis: RedisServer, open_store: Any,
                                                            prefix: str) -> None:
    first, second = open_store(own_redis, prefix), open_store(own_redis, prefix)
    state = first.load()
    write(first, state, EVERY_OP[:6])
    assert first.reseed(state) is False  # Redis still has its data
    assert first.reseed(RuntimeState()) is False  # nothing to write back
    own_redis.client().flushall()
    assert [first.reseed(state), second.reseed(state)] == [True, False]
    assert fields(second.load()) == fields(state)


@pytest.mark.redis
def test_a_write_that_needs_a_full_resync_plans_and_expands_on_the_fresh_state(own_redis: RedisServer,
                                                                               open_store: Any,
                                                                               prefix: str) -> None:
    """A sidecar still on the old epoch writes after Redis was flushed, reseeded and written to.

    Its write's catch-up is a full resync (a new state object); the ops the store expands from
    the caller's state (here the whole permission map of a role) must come from that fresh state,
    or the write silently drops what the others wrote and this sidecar diverges from Redis.
    """
    lagging, other = core(open_store(own_redis, prefix)), core(open_store(own_redis, prefix))
    lagging.write(lambda tx: ([{"op": "set_role_permissions", "role": "support",
                                 "values": {"blockUser": "allow"}}], None), "lagging")
    other.catch_up()
    own_redis.client().flushall()
    other.catch_up()  # reseeds (new epoch); `lagging` has not noticed yet
    other.write(lambda tx: ([{"op": "set_role_permissions", "role": "support",
                               "values": {"createGroup": "allow"}}], None), "other")
    lagging.write(lambda tx: ([{"op": "set_role_permissions", "role": "support",
                                 "values": {"editProfile": "deny"}}], None), "lagging")
    expected = {"blockUser": "allow", "createGroup": "allow", "editProfile": "deny"}
    assert lagging.state.role_permissions["support"] == expected
    loaded = open_store(own_redis, prefix).load()
    assert loaded.role_permissions["support"] == expected, (
        "Redis lost the other sidecar's createGroup value: the write expanded its op from the "
        "pre-resync state object")
    assert fields(lagging.state) == fields(loaded)


# -- Redis: data loss, back from an older snapshot ----------------------------------------------
def settled(sidecar: Sidecar, attempts: int = 20) -> Exception | None:
    """catch_up(); None when it succeeded, else its StoreError (after a reconnect to a restarted Redis)."""
    last: Exception | None = None
    for _ in range(attempts):
        try:
            sidecar.catch_up()
            return None
        except RecoveryPending as exc:
            return exc
        except (StoreError, redis.ConnectionError) as exc:  # the pooled connection died with Redis
            last = exc
            time.sleep(0.05)
    raise AssertionError(f"catch_up kept failing: {last!r}")


@pytest.mark.redis
def test_redis_back_from_an_older_snapshot_the_highest_sidecar_writes_back(own_redis: RedisServer,
                                                                          prefix: str) -> None:
    grace = 0.5
    stores = [RedisStore(own_redis.url, prefix, timeout_s=0.5, recovery_grace_s=grace) for _ in range(3)]
    holder, lower = core(stores[0]), core(stores[1])
    try:
        for n in range(3):
            holder.write(lambda tx, n=n: ([{"op": "put_user", "uid": f"early{n}", "role": "support"}], None), "t")
        admin = own_redis.client()
        assert admin.save()
        snap, old_epoch = holder.state.revision, holder.state.epoch
        for n in range(5):  # acknowledged after the snapshot; `lower` sees only the first two
            holder.write(lambda tx, n=n: ([{"op": "put_user", "uid": f"late{n}", "role": "support"}], None), "t")
            if n == 1:
                lower.catch_up()
        top = holder.state.revision
        assert (lower.state.revision, top) == (snap + 2, snap + 5)
        own_redis.restart()  # loads the older dump.rdb
        assert int(admin.get(prefix + "rev")) == snap

        assert isinstance(settled(lower), RecoveryPending), "a Redis below our revision was adopted"
        assert lower.data_loss is not None and (lower.data_loss.first, lower.data_loss.last) == (snap + 1, snap + 2)
        assert lower.state.revision == snap + 2, "the state must not go back while the loss is pending"
        # a sidecar that starts now cannot know; Redis refuses its writes (they would reuse numbers)
        fresh_store = stores[2]
        assert fresh_store.load().revision == snap
        with pytest.raises(StoreError):
            fresh_store.write(lambda: [{"op": "put_user", "uid": "reused", "role": "support"}], "fresh")
        assert isinstance(settled(holder), RecoveryPending)  # the grace period is not over
        time.sleep(grace + 0.1)
        assert isinstance(settled(lower), RecoveryPending), "the lower sidecar must leave it to the highest"
        assert settled(holder) is None
        assert holder.data_loss is not None and holder.data_loss.status == "written"
        assert holder.data_loss_events == 1, "pending then written is one event"
        events = metrics.current().registry.get_sample_value("chatauthz_data_loss_events_total") or 0.0
        metrics.GaugeUpdater(holder.stats).update()  # what the metrics thread does every second
        assert metrics.current().registry.get_sample_value("chatauthz_data_loss_events_total") == events + 1
        assert metrics.current().registry.get_sample_value("chatauthz_data_loss_info", {
            "epoch": old_epoch, "first": str(snap + 1), "last": str(top), "status": "written",
            "restored_to": str(top)}) == 1
        new_epoch = admin.get(prefix + "epoch")
        assert new_epoch != old_epoch and int(admin.get(prefix + "rev")) == top
        assert settled(lower) is None
        assert lower.data_loss is not None and lower.data_loss.status == "followed"
        assert (lower.data_loss.restored_to, lower.data_loss.new_epoch) == (top, new_epoch)
        assert fields(lower.state) == fields(holder.state) == fields(fresh_store.load())
        assert {f"late{n}" for n in range(5)} <= set(lower.state.users)

        # new writes: the new epoch, numbers after every one the old epoch issued
        done = lower.write(lambda tx: ([{"op": "put_user", "uid": "after", "role": "support"}], None), "t")
        revision, token = done.revision, done.token
        assert (revision, token) == (top + 1, f"{new_epoch}:{top + 1}")
        holder.catch_up()
        request = AuthzRequest("after", "createGroup")
        assert holder.decide(request, Token(new_epoch, top + 1))["token"] == token
        # tokens of the old epoch are never satisfied, even where the new epoch has that number
        for old in (Token(old_epoch, snap + 1), Token(old_epoch, top + 1), Token(old_epoch, 1)):
            for sidecar in (holder, lower):
                with pytest.raises(ChatAuthzError) as refused:
                    sidecar.decide(request, old)
                assert (refused.value.code, refused.value.status) == ("ERR_REVISION_EPOCH_MISMATCH", 409)
    finally:
        for store in stores:
            store.close()


@pytest.mark.redis
def test_a_claim_on_a_stale_look_at_redis_does_not_fence_it_again(own_redis: RedisServer, prefix: str) -> None:
    """Two sidecars look at the rolled-back Redis; one writes back before the other claims. The
    late claim must not set the fence again: it would refuse every write until its TTL ran out."""
    stores = [RedisStore(own_redis.url, prefix, timeout_s=0.5) for _ in range(2)]
    first, late = core(stores[0]), core(stores[1])
    try:
        first.write(lambda tx: ([{"op": "put_user", "uid": "u1", "role": "support"}], None), "t")
        admin = own_redis.client()
        assert admin.save()
        old_epoch = first.state.epoch
        first.write(lambda tx: ([{"op": "put_user", "uid": "u2", "role": "support"}], None), "t")
        late.catch_up()
        own_redis.restart()  # back at revision 1
        loss = DataLoss(old_epoch, 2, 2, "pending")
        assert settled(first) is None and first.data_loss is not None and first.data_loss.status == "written"
        assert stores[1]._claim(late.state, loss, old_epoch, 1).status == "pending"  # what `late` saw before
        assert not admin.exists(prefix + "recovery"), "a stale claim fenced the written-back Redis"
        assert settled(late) is None and late.data_loss is not None and late.data_loss.status == "followed"
        assert late.write(lambda tx: ([{"op": "put_user", "uid": "u3", "role": "support"}], None), "t").revision == 3
    finally:
        for store in stores:
            store.close()


# -- Redis: hash tags, WAIT, the old layout ------------------------------------------------------
def test_every_key_of_a_prefix_is_inside_one_hash_tag() -> None:
    assert keyspace("chatauthz:") == "{chatauthz}:"
    assert keyspace("app") == "{app}"
    assert keyspace("{chatauthz}:") == "{chatauthz}:"  # spelled with its tag: the same keys
    assert keyspace("app:eu-1:") == "{app:eu-1}:" and has_hash_tag(keyspace("app:eu-1:"))
    # found by an outside attack: a tag followed by more overlapped another app's keys
    # ('{chatauthz}:members:epoch' is app chatauthz's group 'epoch'); braces anywhere else likewise
    for bad in ("", ":", "}x:", "{chatauthz}:members:", "x{app}:", "a}b:", "{a", "a}b{", "{}:", "a::b", "ü:"):
        with pytest.raises(ValueError):
            keyspace(bad)
    store = RedisStore("redis://127.0.0.1:1/0", "app1:")
    try:
        names = [store.key("rev"), store.user_field("u")[0], store.owner_field("g")[0], store.members_key("g"),
                 store.bans_key("g"), store.overrides_key("g"), store.channel]
        assert all(name.startswith("{app1}:") for name in names), names
        assert store.pattern("members:") == "{app1}:members:*"
        with pytest.raises(ValueError):  # glob characters never reach a SCAN pattern
            RedisStore("redis://127.0.0.1:1/0", "a*[b]:")
    finally:
        store.close()


@pytest.mark.redis
def test_the_key_layout_of_before_hash_tags_is_refused_not_taken_for_an_empty_redis(
        module_redis: RedisServer) -> None:
    old_prefix = unique("old") + ":"
    admin = module_redis.client()
    admin.set(old_prefix + "epoch", "e1")
    admin.set(old_prefix + "rev", "7")
    store = RedisStore(module_redis.url, old_prefix, timeout_s=0.5)
    try:
        with pytest.raises(StoreError) as refused:
            store.load()
        assert "layout" in refused.value.message and old_prefix + "rev" in refused.value.message
        assert not admin.exists(store.key("epoch")), "the refused load wrote a new epoch"
    finally:
        store.close()


@pytest.mark.redis
@pytest.mark.parametrize("cache_entries", [None, 1000])
def test_min_replicas_refuses_writes_never_decisions(module_redis: RedisServer, cache_entries: int | None) -> None:
    """Found by an outside attack: with no replica, a sidecar with --redis-min-replicas could not
    even load (the layout look of a load WAITed) and denied every decision. Only a commit waits."""
    key_prefix = unique("wait-load") + ":"
    RedisStore(module_redis.url, key_prefix).write(lambda: [{"op": "put_user", "uid": "u1", "role": "support"}],
                                                   "seed")
    lonely = Sidecar(POLICY, RedisStore(RedisSpec(url=module_redis.url, timeout_s=0.3, min_replicas=1), key_prefix),
                     cache_entries=cache_entries)
    try:
        assert lonely.loaded and lonely.state.revision == 1
        body = lonely.decide(AuthzRequest("u1", "sendMessage", context={"messageType": "text",
                                                                       "receiverType": "user"}))
        assert body["allowed"] and body["role"] == "support", body
        with pytest.raises(StoreError) as refused:
            lonely.write(lambda tx: ([{"op": "put_user", "uid": "u2", "role": "support"}], None), "t")
        assert refused.value.code == "ERR_WRITE_NOT_REPLICATED"
    finally:
        lonely.store.close()


@pytest.mark.redis
def test_a_write_is_acknowledged_only_once_min_replicas_have_it(module_redis: RedisServer,
                                                                shared_sentinel: SentinelSetup) -> None:
    """WAIT on the write's own connection: a Redis without replicas refuses (503, not
    acknowledged); Sentinel's primary with its replica acknowledges, and the replica has it."""
    key_prefix = unique("wait") + ":"
    lonely = core(RedisStore(RedisSpec(url=module_redis.url, timeout_s=0.3, min_replicas=1), key_prefix))
    replicated = core(RedisStore(shared_sentinel.spec(timeout_s=0.5, min_replicas=1), key_prefix))
    try:
        started = time.monotonic()
        with pytest.raises(StoreError) as refused:
            lonely.write(lambda tx: ([{"op": "put_user", "uid": "u1", "role": "support"}], None), "t")
        assert time.monotonic() - started < 3.0
        assert (refused.value.status, refused.value.code) == (503, "ERR_WRITE_NOT_REPLICATED")
        assert "0 of the 1 replica(s)" in refused.value.message and "not acknowledged" in refused.value.message
        assert "u1" not in lonely.state.users, "a refused write was applied as if acknowledged"
        done = replicated.write(lambda tx: ([{"op": "put_user", "uid": "u1", "role": "support"}], None), "t")
        assert done.revision == 1
        replica = shared_sentinel.replica().client()
        assert replica.hget(*replicated.store.user_field("u1")) == "support"  # there before the answer
        assert replica.get(keyspace(key_prefix) + "rev") == "1"
    finally:
        lonely.store.close()
        replicated.store.close()
