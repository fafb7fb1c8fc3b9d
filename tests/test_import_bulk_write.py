"""write_batch (BulkWritable), the bulk write `chatauthz import` commits each batch with, on both
stores: it leaves every table, hash and set (Redis's roleusers:<role> index included) exactly as
write() with the same ops does, journals them as one revision, and writes nothing when the store
is no longer at the revision the caller expects (ERR_STORE_CHANGED).

Random op lists (users changing roles back and forth, groups, members whose scope changes, bans
that remove them, now and then an op outside the bulk path) on a store that already holds some
of the same entities; Redis is a real redis-server, one for the module.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.errors import ConflictError
from sidecar.state import Op
from sidecar.stores.base import BulkWritable, Runs, ops_of_runs, runs_json, runs_of
from sidecar.stores.redisstore import RedisStore
from sidecar.stores.sqlite import SQLiteStore
from tests.redis_support import RedisServer, unique

BEFORE: list[Op] = [
    {"op": "put_user", "uid": "u1", "role": "support"}, {"op": "put_user", "uid": "u2", "role": "restricted"},
    {"op": "put_group", "guid": "g1", "owner": "u1"}, {"op": "put_member", "guid": "g1", "uid": "u1", "scope": "admin"},
    {"op": "put_member", "guid": "g1", "uid": "u3", "scope": "participant"}, {"op": "ban", "guid": "g1", "uid": "u4"},
]
USERS = st.sampled_from(["u1", "u2", "u3", "u4", "u5"])
GROUPS = st.sampled_from(["g1", "g2", "g3"])
OPS = st.one_of(
    st.fixed_dictionaries({"op": st.just("put_user"), "uid": USERS,
                           "role": st.sampled_from(["support", "restricted", "default", "custom"])}),
    st.fixed_dictionaries({"op": st.just("put_group"), "guid": GROUPS, "owner": USERS}),
    st.fixed_dictionaries({"op": st.just("put_member"), "guid": GROUPS, "uid": USERS,
                           "scope": st.sampled_from(["admin", "moderator", "participant"])}),
    st.fixed_dictionaries({"op": st.just("ban"), "guid": GROUPS, "uid": USERS}),
)
OTHER_OPS = st.one_of(  # not of the bulk path: write_batch queues them one by one
    st.fixed_dictionaries({"op": st.just("delete_member"), "guid": GROUPS, "uid": USERS}),
    st.fixed_dictionaries({"op": st.just("delete_user"), "uid": USERS}),
    st.fixed_dictionaries({"op": st.just("unban"), "guid": GROUPS, "uid": USERS}),
)
op_lists = st.one_of(st.lists(OPS, min_size=1, max_size=40),
                     st.lists(st.one_of(OPS, OPS, OPS, OTHER_OPS), min_size=1, max_size=40))


def sqlite_tables(store: SQLiteStore) -> dict[str, list[tuple[Any, ...]]]:
    conn = store._conn()
    return {table: sorted(conn.execute(f"SELECT * FROM {table}").fetchall())  # noqa: S608 (fixed names)
            for table in ("users", "groups", "members", "bans")}


def redis_keys(server: RedisServer, prefix: str) -> dict[str, Any]:
    """Every entity key under prefix (not the revision, journal or epoch), raw."""
    client = server.client()
    found: dict[str, Any] = {}
    for key in client.scan_iter(match=prefix + "*"):
        name = key[len(prefix):] if isinstance(key, str) else key.decode()[len(prefix):]
        kind = client.type(key)
        kind = kind if isinstance(kind, str) else kind.decode()
        if kind == "hash" and name != "journal":
            found[name] = client.hgetall(key)
        elif kind == "set":
            found[name] = client.smembers(key)
    return found


def one_by_one_and_in_bulk(first: Any, second: Any, ops: list[Op]) -> None:
    """Both stores hold BEFORE; the ops go to the first by write(), to the second by write_batch."""
    for store in (first, second):
        store.load()
        store.write(lambda: [dict(op) for op in BEFORE], "setup")
    revision, _ = first.write(lambda: [dict(op) for op in ops], "import")
    assert isinstance(second, BulkWritable)
    assert second.write_batch([dict(op) for op in ops], "import", 1) == revision == 2
    assert second.changes_since(1) == [(2, ops)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=op_lists)
def test_sqlite_bulk_writes_what_writing_each_op_writes(tmp_path: Path, ops: list[Op]) -> None:
    folder = tmp_path / unique("db")
    folder.mkdir()
    first, second = SQLiteStore(folder / "a.db"), SQLiteStore(folder / "b.db")
    try:
        one_by_one_and_in_bulk(first, second, ops)
        assert sqlite_tables(second) == sqlite_tables(first)
    finally:
        first.close()
        second.close()


@pytest.mark.redis
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=op_lists)
def test_redis_bulk_writes_what_writing_each_op_writes(module_redis: RedisServer, ops: list[Op]) -> None:
    prefixes = unique("a") + ":", unique("b") + ":"
    first, second = (RedisStore(module_redis.url, prefix, 1.0) for prefix in prefixes)
    try:
        one_by_one_and_in_bulk(first, second, ops)
        assert redis_keys(module_redis, prefixes[1]) == redis_keys(module_redis, prefixes[0])
        assert second.load().users == first.load().users
    finally:
        first.close()
        second.close()


def bulk_store(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    """A fresh store of that kind (Redis: the module's server, a prefix of its own)."""
    if kind == "sqlite":
        return SQLiteStore(tmp_path / "s.db")
    return RedisStore(request.getfixturevalue("module_redis").url, unique("b") + ":", 1.0)


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def test_a_store_no_longer_at_the_expected_revision_takes_nothing(kind: str, tmp_path: Path,
                                                                   request: pytest.FixtureRequest) -> None:
    store = bulk_store(kind, tmp_path, request)
    try:
        store.load()
        store.write(lambda: [{"op": "put_user", "uid": "late", "role": "support"}], "someone")
        with pytest.raises(ConflictError, match="is at revision 1, not at revision 0") as caught:
            store.write_batch([{"op": "put_user", "uid": "u1", "role": "support"}], "import", 0)
        assert caught.value.code == "ERR_STORE_CHANGED"
        assert store.load().users == {"late": "support"} and store.load().revision == 1
        assert store.write_batch([], "import", 1) == 1  # nothing to write: nothing written
        with pytest.raises(ValueError, match="unknown op"):  # the registry's shapes only
            store.write_batch([{"op": "put_user", "uid": "u1", "role": "support"}, {"op": "drop_all"}], "import", 1)
        assert store.write_batch([{"op": "put_user", "uid": "u1", "role": "support"}], "import", 1) == 2
        assert store.load().users == {"late": "support", "u1": "support"}
    finally:
        store.close()


@pytest.mark.redis
def test_redis_bulk_splits_big_keys_into_commands(module_redis: RedisServer) -> None:
    """More ops than one RUN_OPS call takes (BULK_CALL_FIELDS), 60,000 fields of one key: still
    what write() gives."""
    ops: list[Op] = [{"op": "put_group", "guid": "big", "owner": "u1"}]
    ops += [{"op": "put_member", "guid": "big", "uid": f"m{i}", "scope": "participant"} for i in range(60_000)]
    ops += [{"op": "put_user", "uid": f"m{i}", "role": "support"} for i in range(45_000)]
    ops += [{"op": "ban", "guid": "big", "uid": f"m{i}"} for i in range(0, 60_000, 7)]
    prefixes = unique("a") + ":", unique("b") + ":"
    first, second = (RedisStore(module_redis.url, prefix, 5.0) for prefix in prefixes)
    try:
        one_by_one_and_in_bulk(first, second, ops)
        assert redis_keys(module_redis, prefixes[1]) == redis_keys(module_redis, prefixes[0])
    finally:
        first.close()
        second.close()


VALUES = st.one_of(st.sampled_from(["u1", "g1", "admin"]), st.text(max_size=5))  # quotes, backslashes, controls


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(
    st.fixed_dictionaries({"op": st.just("put_user"), "uid": VALUES, "role": VALUES}),
    st.fixed_dictionaries({"op": st.just("put_member"), "guid": VALUES, "uid": VALUES, "scope": VALUES}),
    st.fixed_dictionaries({"op": st.just("ban"), "guid": VALUES, "uid": VALUES})), max_size=20))
def test_runs_journal_as_the_ops_json(ops: list[Op]) -> None:
    """runs_json, the journal entry of a bulk write, is the ops' JSON, even for values that must
    be escaped (it writes plain ones from templates)."""
    runs = runs_of(ops)
    assert runs is not None and ops_of_runs(runs) == ops
    assert orjson.loads(runs_json(runs)) == ops


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def test_several_batches_are_written_all_or_none(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """write_runs of several batches: each its revision and journal entry; a bad second batch
    leaves nothing of the first (SQLite takes an import's batches in one transaction)."""
    store = bulk_store(kind, tmp_path, request)
    try:
        store.load()
        first: Runs = [("put_user", [("u1", "support")]), ("put_group", [("g1", "u1")])]
        with pytest.raises((ValueError, KeyError)):
            store.write_runs([first, [("drop_all", [("x",)])]], "import", 0)
        assert store.load().revision == 0 and store.load().users == {} and store.changes_since(0) == []
        second: Runs = [("put_member", [("g1", "u2", "moderator")]), ("ban", [("g1", "u3")])]
        assert store.write_runs([first, [], second], "import", 0) == [1, 2]
        assert store.changes_since(0) == [(1, ops_of_runs(first)), (2, ops_of_runs(second))]
        state = store.load()
        assert state.users == {"u1": "support"} and state.owners == {"g1": "u1"}
        assert state.members == {"g1": {"u2": "moderator"}} and state.bans == {"g1": {"u3"}}
    finally:
        store.close()
