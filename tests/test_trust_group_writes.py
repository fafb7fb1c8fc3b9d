"""Wrong allows found by an outside attack on the group writes, each now refused as /authorize
refuses it (in-process, through the same plans the HTTP views commit):
- a bulk add on behalf of a moderator (whose group lets them add members one at a time): POST /groups/{guid}/members with more than one uid is
  CometChat's massMemberOperate (owner or admin only); before, each uid was checked alone;
- a group created on behalf of alice with bob as its owner (bob made an owner unasked);
- ownership transferred to a banned user, which unbanned them as a side effect.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from sidecar import groups as grp
from sidecar.core import Sidecar
from sidecar.engine import AuthzRequest
from sidecar.errors import ChatAuthzError
from sidecar.policy import load_policy
from sidecar.stores.sqlite import SQLiteStore

ROOT = Path(__file__).resolve().parent.parent
POLICY = load_policy(ROOT / "policies", ROOT / "model.conf")


@pytest.fixture
def core(tmp_path: Path) -> Sidecar:
    sidecar = Sidecar(POLICY, SQLiteStore(tmp_path / "t.db"))
    sidecar.write(lambda tx: ([{"op": "put_group", "guid": "g", "owner": "own"},
                               {"op": "put_member", "guid": "g", "uid": "own", "scope": "admin"},
                               {"op": "put_member", "guid": "g", "uid": "adm", "scope": "admin"},
                               {"op": "put_member", "guid": "g", "uid": "mod", "scope": "moderator"},
                               {"op": "ban", "guid": "g", "uid": "bad"}], None), "test")
    return sidecar


def refused(core: Sidecar, plan: object) -> ChatAuthzError:
    with pytest.raises(ChatAuthzError) as info:
        core.write(plan, "test")  # type: ignore[arg-type]
    return info.value


def test_a_bulk_add_is_mass_member_operate(core: Sidecar) -> None:
    """The group lets moderators add members, one at a time: a bulk add is still an admin's."""
    core.write(lambda tx: ([{"op": "set_scope_permissions", "guid": "g", "scope": "moderator",
                             "values": {"addMembers": "allow"}}], None), "test")
    wanted = grp.parse_members({"participants": ["p1", "p2"]})
    decision = core.decide(AuthzRequest("mod", "massMemberOperate", "g"))
    error = refused(core, lambda tx: grp.plan_add_members(tx, "g", wanted, "mod"))
    assert (error.code, error.status) == (decision["code"], 403) == ("ERR_GROUP_NO_ADMIN_SCOPE", 403)
    assert error.message == decision["reason"]
    assert core.state.scope_of("g", "p1") is None
    one = grp.parse_members({"participants": ["p1"]})  # one uid is an ordinary add, decided as addMembers
    assert core.write(lambda tx: grp.plan_add_members(tx, "g", one, "mod"), "test").result == {
        "participants": {"p1": {"success": True}}}
    assert core.write(lambda tx: grp.plan_add_members(tx, "g", wanted, "adm"), "test").result == {
        "participants": {"p1": {"success": False, "error": {
            "code": "ERR_ALREADY_JOINED", "message": "'p1' is already a member of group 'g' (as participant)"}},
            "p2": {"success": True}}}


def test_a_group_created_on_behalf_of_a_user_is_theirs(core: Sidecar) -> None:
    error = refused(core, lambda tx: grp.plan_set_group(tx, "new", "bob", "alice"))
    assert (error.code, error.status) == ("ERR_GROUP_NO_CLEARANCE", 403)
    assert "new" not in core.state.owners
    core.write(lambda tx: grp.plan_set_group(tx, "new", "alice", "alice"), "test")
    assert core.state.owners["new"] == "alice" and core.state.scope_of("new", "alice") == "admin"


def test_ownership_never_goes_to_a_banned_user(core: Sidecar) -> None:
    decision = core.decide(AuthzRequest("own", "transferOwnership", "g", "bad"))
    assert (decision["allowed"], decision["code"]) == (False, "ERR_BANNED_GROUPMEMBER")
    error = refused(core, lambda tx: grp.plan_set_group(tx, "g", "bad", "own"))
    assert (error.code, error.message) == (decision["code"], decision["reason"])
    error = refused(core, lambda tx: grp.plan_set_group(tx, "g", "bad", None))  # the full key: same refusal
    assert (error.code, error.status) == ("ERR_BANNED_GROUPMEMBER", 400)
    assert core.state.owners["g"] == "own" and core.state.is_banned("g", "bad")


def test_a_uid_twice_in_usersToBan_is_one_ban_not_a_conflict() -> None:
    """The message said "listed both to add and to ban" for a uid only in usersToBan (twice)."""
    assert grp.parse_members({"usersToBan": ["mod", "MOD"]}) == {"mod": "usersToBan"}
    with pytest.raises(ChatAuthzError, match="listed both to add and to ban"):
        grp.parse_members({"participants": ["mod"], "usersToBan": ["MOD"]})
