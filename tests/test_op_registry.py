"""One registry of ops (sidecar.state.OPS): RuntimeState.apply, the change log's `before`, both
stores and the op script the store suites replay against real SQLite and Redis
(tests/op_script.EVERY_OP) all cover exactly its kinds, and a store refuses an op that is not
shaped like one of them (nothing of the write is kept). Pure, plus the embedded store on a
temp file."""
from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.state import OPS, POLICY_OPS, RuntimeState, op_problem, with_before
from sidecar.stores.sqlite import OP_SQL, SQLiteStore
from tests.op_script import EVERY_OP


def test_every_part_handles_exactly_the_registry() -> None:
    handlers = {name[1:] for name in vars(RuntimeState) if name.startswith("_") and not name.startswith("__")
                and not name.startswith("_index_") and callable(getattr(RuntimeState, name))}
    assert handlers == set(OPS)
    assert {op["op"] for op in EVERY_OP} == set(OPS)  # the store suites replay every kind
    sqlite_special = {"set_role_permissions", "set_scope_permissions"}  # executemany, see _execute_op
    assert set(OP_SQL) | sqlite_special == set(OPS) and not set(OP_SQL) & sqlite_special
    assert POLICY_OPS <= set(OPS)


def test_each_kind_has_its_shape_and_a_before() -> None:
    state = RuntimeState()
    for op in EVERY_OP:
        assert op_problem(op) is None, op
        logged = with_before(state, op)
        assert op_problem(logged) is None and "before" in logged
        state.apply(op)


@pytest.mark.parametrize("bad", [
    {"op": "no_such_op"}, {"op": "put_user", "uid": "u1"}, {"op": "put_user", "uid": "u1", "role": "r", "x": 1},
    ["put_user"], {"uid": "u1", "role": "r"}])
def test_a_misshapen_op_is_named_and_never_stored(tmp_path: Path, bad: object) -> None:
    assert op_problem(bad) is not None
    store = SQLiteStore(tmp_path / "s.db")
    try:
        with pytest.raises(ValueError):
            store.write(lambda: [{"op": "put_user", "uid": "u0", "role": "support"}, bad], "t")  # type: ignore[list-item]
        assert store.load().revision == 0 and store.load().users == {}
    finally:
        store.close()


@pytest.mark.parametrize("bad", [{"op": "no_such_op"}, {"op": "put_member", "guid": "g", "uid": "late"}, "put_user"])
def test_a_write_with_one_bad_op_is_applied_not_at_all(bad: object) -> None:
    """A journal entry is applied whole or not at all: a valid op before a bad one (a journal
    written by something else) must not reach the state (it would be a state no revision had)."""
    state = RuntimeState()
    state.apply_all([{"op": "put_group", "guid": "g", "owner": "o"}], 1)
    before = (dict(state.owners), {g: dict(m) for g, m in state.members.items()}, state.revision)
    with pytest.raises(ValueError):
        state.apply_all([{"op": "put_member", "guid": "g", "uid": "partial", "scope": "admin"}, bad], 2)  # type: ignore[list-item]
    assert (dict(state.owners), {g: dict(m) for g, m in state.members.items()}, state.revision) == before
