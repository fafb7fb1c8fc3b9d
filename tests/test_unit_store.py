"""The embedded SQLite store on a temporary file: atomic writes with one revision counter, a
journal that replays to the same state as a full load, and two workers sharing one file."""
from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.core import Sidecar, WriteContext
from sidecar.engine import AuthzRequest
from sidecar.policy import load_policy
from sidecar.state import Op, RuntimeState
from sidecar.stores.sqlite import SQLiteStore
from tests.op_script import EVERY_OP, FIELDS, fields, in_memory

REPO = Path(__file__).resolve().parents[1]
POLICY = load_policy(REPO / "policies")
TABLES = ("meta", "journal", "roles", "role_permissions", "restricted", "users", "groups", "members", "bans",
          "overrides")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
def open_store(db: Path) -> Iterator[Any]:
    """Open SQLiteStore objects on the test's file; all are closed at teardown."""
    opened: list[SQLiteStore] = []

    def open_one() -> SQLiteStore:
        store = SQLiteStore(db)
        opened.append(store)
        return store
    yield open_one
    for store in opened:
        store.close()




def replay(store: SQLiteStore) -> RuntimeState:
    state = RuntimeState()
    for revision, ops in store.changes_since(0):
        state.apply_all(ops, revision)
    return state


def dump_tables(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(db)
    try:
        return {table: sorted(conn.execute(f"SELECT * FROM {table}").fetchall()) for table in TABLES}  # noqa: S608
    finally:
        conn.close()


def ops_writer(ops: list[Op]) -> Any:
    return lambda: [dict(op) for op in ops]


# Ops of every kind, in an order that leaves something of each in the final state.


def test_every_op_kind_is_covered() -> None:
    handlers = {name[1:] for name in vars(RuntimeState) if name.startswith("_") and not name.startswith("__")
                and not name.startswith("_index_") and callable(getattr(RuntimeState, name))}
    assert {op["op"] for op in EVERY_OP} == handlers


def test_write_commits_ops_and_bumps_revision_by_one(open_store: Any) -> None:
    store = open_store()
    assert store.load().revision == 0
    ops: list[Op] = [{"op": "put_user", "uid": "u1", "role": "support"},
                     {"op": "put_group", "guid": "g1", "owner": "u1"}]
    revision, written = store.write(ops_writer(ops), "tester")
    assert revision == 1
    assert written == ops
    state = store.load()
    assert state.revision == 1
    assert state.users == {"u1": "support"}
    assert state.owners == {"g1": "u1"}
    assert store.changes_since(0) == [(1, ops)]
    revision, _ = store.write(ops_writer([{"op": "put_user", "uid": "u2", "role": "default"}]), "tester")
    assert revision == 2
    assert [rev for rev, _ in store.changes_since(0)] == [1, 2]
    assert [rev for rev, _ in store.changes_since(1)] == [2]
    assert store.changes_since(2) == []


def test_a_plan_that_raises_leaves_nothing_written(open_store: Any, db: Path) -> None:
    store = open_store()
    store.write(ops_writer(EVERY_OP[:10]), "tester")
    before_tables, before_state = dump_tables(db), fields(store.load())

    class Refused(Exception):
        pass

    def plan() -> list[Op]:
        raise Refused("no")
    with pytest.raises(Refused):
        store.write(plan, "tester")
    assert dump_tables(db) == before_tables
    assert fields(store.load()) == before_state
    assert store.load().revision == 1


def test_a_failing_op_rolls_back_the_ops_before_it(open_store: Any, db: Path) -> None:
    store = open_store()
    before = dump_tables(db)
    unwritable = {"op": "put_role", "role": "r", "record": {"role": "r", "name": object()}}  # fails mid-write
    with pytest.raises(TypeError):
        store.write(ops_writer([{"op": "put_user", "uid": "u1", "role": "support"}, unwritable]), "t")
    with pytest.raises(ValueError, match="unknown op 'no_such_op'"):  # refused by the op registry first
        store.write(ops_writer([{"op": "put_user", "uid": "u1", "role": "support"}, {"op": "no_such_op"}]), "t")
    assert dump_tables(db) == before
    assert store.load().revision == 0
    # the store is still usable afterwards
    assert store.write(ops_writer([{"op": "put_user", "uid": "u1", "role": "support"}]), "t")[0] == 1


def test_a_write_with_no_ops_changes_nothing(open_store: Any, db: Path) -> None:
    store = open_store()
    store.write(ops_writer(EVERY_OP[:3]), "tester")
    before = dump_tables(db)
    assert store.write(lambda: [], "tester") == (1, [])
    assert dump_tables(db) == before
    assert store.load().revision == 1


def test_load_after_reopen_equals_replaying_the_journal(open_store: Any, db: Path) -> None:
    store = open_store()
    for start in range(0, len(EVERY_OP), 4):
        store.write(ops_writer(EVERY_OP[start:start + 4]), "tester")
    store.close()
    reopened = open_store()
    loaded, replayed = reopened.load(), replay(reopened)
    assert loaded.revision == replayed.revision == -(-len(EVERY_OP) // 4)
    assert fields(loaded) == fields(replayed)
    assert fields(loaded) == fields(in_memory(EVERY_OP, loaded.revision))


def test_every_op_kind_round_trips(open_store: Any) -> None:
    store = open_store()
    for index, op in enumerate(EVERY_OP, start=1):
        store.write(ops_writer([op]), "tester")
        loaded = store.load()
        expected = in_memory(EVERY_OP[:index], index)
        assert fields(loaded) == fields(expected), f"after op {index}: {op}"
    final = fields(store.load())
    # the final state holds something of every table
    assert all(final[name] for name in FIELDS), final
    assert final["restricted"]["restricted"] == frozenset()  # an empty runtime list is kept
    assert "temp" not in final["roles"] and "u2" not in final["users"]
    assert "g3" not in final["owners"] and "g3" not in final["bans"] and "g3" not in final["overrides"]


def test_two_stores_on_one_file_see_each_others_commits(open_store: Any) -> None:
    first, second = open_store(), open_store()
    assert second.changed(0) is False  # nothing committed past revision 0
    first.write(ops_writer([{"op": "put_user", "uid": "u1", "role": "support"}]), "worker-1")
    assert second.changed(0) is True   # the shared counter says revision 1 exists
    assert second.changed(1) is False  # a reader at revision 1 has nothing to catch up
    assert second.changes_since(0) == [(1, [{"op": "put_user", "uid": "u1", "role": "support"}])]
    assert second.load().users == {"u1": "support"}
    # and the other way round
    second.write(ops_writer([{"op": "put_user", "uid": "u2", "role": "restricted"}]), "worker-2")
    assert first.changed(1) is True
    assert first.load().revision == 2


def test_a_commit_the_counter_missed_is_found_by_the_backstop(open_store: Any, db: Path) -> None:
    """A writer killed between COMMIT and... (or any writer bypassing the counter): readers still
    find the commit through SQLite's data_version within the backstop interval."""
    reader = open_store()
    assert reader.changed(0) is False
    conn = sqlite3.connect(db)
    conn.execute("UPDATE meta SET value = 1 WHERE key = 'revision'")
    conn.commit()
    conn.close()
    deadline = time.monotonic() + 2
    while not reader.changed(0):
        assert time.monotonic() < deadline, "the backstop never noticed the commit"
        time.sleep(0.05)


def test_sidecars_on_two_stores_see_each_others_writes(open_store: Any) -> None:
    one, two = Sidecar(POLICY, open_store()), Sidecar(POLICY, open_store())
    request = AuthzRequest("u1", "createGroup")
    assert one.decide(request)["allowed"] is True
    assert two.decide(request)["allowed"] is True

    revision = one.write(lambda tx: ([{"op": "put_user", "uid": "u1", "role": "support"}], None), "worker-1").revision
    assert revision == 1
    assert one.state.users == {"u1": "support"}
    two.refresh()
    assert two.state.revision == 1
    assert two.state.users == {"u1": "support"}
    decision = two.decide(request)
    assert decision["allowed"] is False and decision["revision"] == 1

    # policy ops travel too, and invalidate the other worker's Casbin gates
    two.write(lambda tx: ([{"op": "set_role_permissions", "role": "support",
                            "values": {"createGroup": "allow"}}], None), "worker-2")
    one.refresh()
    assert one.state.revision == 2
    decision = one.decide(request)
    assert decision["allowed"] is True and decision["revision"] == 2
    assert "runtime" in decision["reason"]

    # both converge on the store's state
    for sidecar in (one, two):
        assert fields(sidecar.state) == fields(sidecar.store.load())


def test_sidecar_write_plans_on_caught_up_state(open_store: Any) -> None:
    one, two = Sidecar(POLICY, open_store()), Sidecar(POLICY, open_store())
    one.write(lambda tx: ([{"op": "put_group", "guid": "g1", "owner": "o"}], None), "worker-1")
    seen: list[dict[str, str]] = []

    def plan(tx: WriteContext) -> tuple[list[Op], None]:
        seen.append(dict(tx.state.owners))
        return [{"op": "put_member", "guid": "g1", "uid": "o", "scope": "admin"}], None
    assert two.write(plan, "worker-2").revision == 2
    assert seen == [{"g1": "o"}]
    one.refresh()
    assert one.state.members == {"g1": {"o": "admin"}}


def test_sidecar_write_that_refuses_changes_nothing(open_store: Any, db: Path) -> None:
    sidecar = Sidecar(POLICY, open_store())
    sidecar.write(lambda tx: ([{"op": "put_user", "uid": "u1", "role": "support"}], None), "w")
    before = dump_tables(db)

    def plan(tx: WriteContext) -> tuple[list[Op], None]:
        raise ValueError("refused")
    with pytest.raises(ValueError):
        sidecar.write(plan, "w")
    assert dump_tables(db) == before
    assert sidecar.state.revision == 1
    assert sidecar.write(lambda tx: ([], None), "w").revision == 1
