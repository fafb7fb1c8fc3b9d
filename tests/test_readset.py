"""sidecar.readset: what a write plan read is noted without the plan listing it (pure, no I/O)."""
from __future__ import annotations

from pathlib import Path

import pytest

from sidecar import groups as grp
from sidecar import management as m
from sidecar.core import WriteContext
from sidecar.engine import Engine
from sidecar.policy import load_policy
from sidecar.readset import Entities, ReadView, written_by
from sidecar.state import OPS, RuntimeState, with_before
from tests.op_script import EVERY_OP, in_memory

POLICY = load_policy(Path(__file__).resolve().parents[1] / "policies")


def world() -> RuntimeState:
    state = RuntimeState()
    for op in [{"op": "put_group", "guid": "g", "owner": "o"}, {"op": "put_member", "guid": "g", "uid": "o", "scope": "admin"},
               {"op": "put_member", "guid": "g", "uid": "mod", "scope": "moderator"},
               {"op": "put_member", "guid": "g", "uid": "p", "scope": "participant"},
               {"op": "put_user", "uid": "p", "role": "support"}, {"op": "put_group", "guid": "h", "owner": "x"}]:
        state.apply(op)
    return state


def reads_of(plan: object, state: RuntimeState) -> Entities:
    view = ReadView(state)
    ops, _ = plan(WriteContext(Engine(POLICY), view.as_state()))  # type: ignore[operator]
    for op in ops:
        with_before(view.as_state(), op)
    return view.reads


def test_a_kick_on_behalf_of_a_moderator_notes_what_the_engine_and_the_plan_read() -> None:
    reads = reads_of(lambda tx: grp.plan_remove_member(tx, "g", "p", "mod"), world())
    assert "mod" in reads.users  # the actor's role (the target's only where a constraint reads it)
    assert reads.owners == {"g"} and reads.members == {"g"} and reads.bans == {"g"} and "g" in reads.overrides
    assert reads.policy  # the role and scope gates
    assert not (reads.everything or reads.all_users or reads.all_owners)
    assert "h" not in reads.owners | reads.members  # another group is not read


def test_whole_tables_and_unknown_reads_are_noted_coarsely() -> None:
    state = world()
    view = ReadView(state)
    assert len(view.users) == 1 and view.reads.all_users and not view.reads.everything
    view = ReadView(state)
    assert dict(view.owners) == state.owners and view.reads.all_owners
    view = ReadView(state)
    assert list(view.members) and view.reads.everything  # every group's members: no key names that
    view = ReadView(state)
    assert view.groups_of("o") == {"g"} and view.reads.everything  # a reader the view does not know
    view = ReadView(state)
    assert view.scope_of("g", "p") == "participant" and view.reads.members == {"g"}
    assert view.is_banned("g", "p") is False and view.reads.bans == {"g"}
    with pytest.raises(TypeError):
        view.apply({"op": "delete_group", "guid": "g"})
    # deleting a role counts its users (before, result): all users
    assert reads_of(lambda tx: m.plan_delete_role(tx, "agent"), in_memory(EVERY_OP[:1])).all_users


def test_every_op_of_the_registry_names_what_it_changes() -> None:
    seen = set()
    for op in EVERY_OP:
        changed = written_by([op])
        assert changed and not changed.everything, op
        seen.add(op["op"])
    assert seen == set(OPS), set(OPS) - seen
    assert written_by([{"op": "no_such_op"}]).everything


def test_touches() -> None:
    user = Entities(users={"u"})
    assert user.touches(Entities(users={"u"})) and not user.touches(Entities(users={"v"}))
    assert user.touches(Entities(all_users=True)) and Entities(all_users=True).touches(user)
    assert not user.touches(Entities(owners={"u"})) and Entities(policy=True).touches(Entities(policy=True))
    assert Entities(everything=True).touches(Entities(bans={"g"})) and not Entities().touches(Entities(everything=True))
