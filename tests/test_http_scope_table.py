"""The seed's scope table (product.md §1), cell by cell, through POST /authorize on the real server.

One group is set up through the API (PUT /groups/{guid} makes the owner an admin member,
PUT /groups/{guid}/members/{uid} adds the others); every cell is one authorize request.
"""
from __future__ import annotations

from typing import Any

import pytest
from conftest import Server, unique

ALLOW = (True, None)
DENIED = (False, "ERR_PERMISSION_DENIED")
NO_CLEARANCE = (False, "ERR_GROUP_NO_CLEARANCE")
NO_SCOPE_CLEARANCE = (False, "ERR_GROUP_NO_SCOPE_CLEARANCE")
SELF_ACTION = (False, "ERR_GROUP_NO_SELF_ACTION")

# privilege -> (action, target member ("participant", "moderator", "admin", "outsider", None), context)
PRIVILEGES: dict[str, tuple[str, str | None, dict[str, Any] | None]] = {
    "changeScope of a participant": ("changeScope", "participant", {"newScope": "moderator"}),
    "changeScope of a moderator": ("changeScope", "moderator", {"newScope": "participant"}),
    "addMembers": ("addMembers", "outsider", None),
    "kickMembers of a participant": ("kickMembers", "participant", None),
    "kickMembers of a moderator": ("kickMembers", "moderator", None),
    "ban of a participant": ("ban", "participant", None),
    "ban of a moderator": ("ban", "moderator", None),
    "unban": ("unban", "banned", None),
    "editGroup": ("editGroup", None, None),
    "deleteGroup": ("deleteGroup", None, None),
    "sendMessage": ("sendMessage", None, {"messageType": "text"}),
    "initiateCall": ("initiateCall", None, None),
    "joinCall": ("joinCall", None, None),
    "listMessages": ("listMessages", None, None),
}

# The seed's table: admin - change member scopes, add/kick/ban members, update and delete the
# group, messages and calls; moderator - change the scope of participants, kick and ban
# participants, update the group, messages and calls; participant - messages and calls.
EXPECTED: dict[str, dict[str, tuple[bool, str | None]]] = {
    "admin": {
        "changeScope of a participant": ALLOW,
        "changeScope of a moderator": ALLOW,
        "addMembers": ALLOW,
        "kickMembers of a participant": ALLOW,
        "kickMembers of a moderator": ALLOW,
        "ban of a participant": ALLOW,
        "ban of a moderator": ALLOW,
        "unban": ALLOW,
        "editGroup": ALLOW,
        "deleteGroup": ALLOW,
        "sendMessage": ALLOW,
        "initiateCall": ALLOW,
        "joinCall": ALLOW,
        "listMessages": ALLOW,
    },
    "moderator": {
        "changeScope of a participant": ALLOW,
        "changeScope of a moderator": NO_SCOPE_CLEARANCE,
        "addMembers": DENIED,
        "kickMembers of a participant": ALLOW,
        "kickMembers of a moderator": NO_CLEARANCE,
        "ban of a participant": ALLOW,
        "ban of a moderator": NO_CLEARANCE,
        "unban": ALLOW,
        "editGroup": ALLOW,
        "deleteGroup": DENIED,
        "sendMessage": ALLOW,
        "initiateCall": ALLOW,
        "joinCall": ALLOW,
        "listMessages": ALLOW,
    },
    "participant": {
        "changeScope of a participant": DENIED,
        "changeScope of a moderator": DENIED,
        "addMembers": DENIED,
        "kickMembers of a participant": DENIED,
        "kickMembers of a moderator": DENIED,
        "ban of a participant": DENIED,
        "ban of a moderator": DENIED,
        "unban": DENIED,
        "editGroup": DENIED,
        "deleteGroup": DENIED,
        "sendMessage": ALLOW,
        "initiateCall": ALLOW,
        "joinCall": ALLOW,
        "listMessages": ALLOW,
    },
}

CELLS = [(scope, privilege) for scope in EXPECTED for privilege in PRIVILEGES]


def test_table_is_complete() -> None:
    """Every scope has an expectation for every privilege, and nothing else."""
    for scope, row in EXPECTED.items():
        assert set(row) == set(PRIVILEGES), scope
    assert len(CELLS) == 3 * 14


class World:
    """One group: owner (admin member), a second admin, two moderators, two participants."""

    def __init__(self, srv: Server) -> None:
        self.srv = srv
        self.guid = unique("grp")
        self.uids = {name: unique(name) for name in
                     ("owner", "admin", "admin2", "moderator", "moderator2", "participant", "participant2",
                      "outsider", "banned")}
        body = srv.ok("PUT", f"/groups/{self.guid}", {"owner": self.uids["owner"]})
        assert body["data"]["owner"] == self.uids["owner"]
        for name in ("admin", "admin2", "moderator", "moderator2", "participant", "participant2"):
            scope = name.rstrip("2")
            member = srv.ok("PUT", f"/groups/{self.guid}/members/{self.uids[name]}", {"scope": scope})
            assert member["data"]["scope"] == scope
        srv.ok("POST", f"/groups/{self.guid}/bannedusers/{self.uids['banned']}")  # unban needs a ban

    def actor(self, scope: str) -> str:
        return self.uids[scope]

    def target(self, actor_scope: str, kind: str | None) -> str | None:
        """A member of the wanted scope that is not the actor itself."""
        if kind is None:
            return None
        if kind == actor_scope:
            return self.uids[kind + "2"]
        return self.uids[kind]


@pytest.fixture(scope="module")
def world(shared_server: Server) -> World:
    return World(shared_server)


def test_owner_is_an_admin_member(shared_server: Server, world: World) -> None:
    owner = world.uids["owner"]
    decision = shared_server.authorize(owner, "sendMessage", guid=world.guid)
    assert decision["allowed"] is True
    assert decision["layer"] == "scope"
    group = shared_server.ok("GET", f"/groups/{world.guid}")["data"]
    assert group["owner"] == owner
    assert group["membersCount"] == 7  # the owner is a member (admin) + the six others


@pytest.mark.parametrize(("scope", "privilege"), CELLS, ids=[f"{s}-{p.replace(' ', '_')}" for s, p in CELLS])
def test_scope_table_cell(shared_server: Server, world: World, scope: str, privilege: str) -> None:
    action, target_kind, context = PRIVILEGES[privilege]
    allowed, code = EXPECTED[scope][privilege]
    request = {"uid": world.actor(scope), "action": action, "guid": world.guid,
               "target": world.target(scope, target_kind), "context": context}
    decision = shared_server.authorize(**request)
    assert decision["allowed"] is allowed, (request, decision)
    assert decision.get("code") == code, (request, decision)
    assert decision["role"] == "default"
    assert decision["scope"] == scope, (request, decision)
    assert decision["reason"], decision
    if allowed:
        assert decision["layer"] == "scope"
    elif code == "ERR_PERMISSION_DENIED":
        assert decision["layer"] == "scope"
        assert action in decision["reason"]
    else:
        assert decision["layer"] == "clearance"


ADMIN_ON_ADMIN = [
    ("kickMembers", None, NO_CLEARANCE),
    ("ban", None, NO_CLEARANCE),
    ("changeScope", {"newScope": "moderator"}, NO_SCOPE_CLEARANCE),
    ("changeScope", {"newScope": "participant"}, NO_SCOPE_CLEARANCE),
]


@pytest.mark.parametrize(("action", "context", "expected"), ADMIN_ON_ADMIN,
                         ids=[f"{a}-{(c or {}).get('newScope', '')}" for a, c, _ in ADMIN_ON_ADMIN])
def test_admin_may_not_act_on_another_admin(shared_server: Server, world: World, action: str,
                                            context: dict[str, Any] | None,
                                            expected: tuple[bool, str | None]) -> None:
    decision = shared_server.authorize(world.uids["admin"], action, guid=world.guid,
                                       target=world.uids["admin2"], context=context)
    assert (decision["allowed"], decision.get("code")) == expected, decision
    assert decision["layer"] == "clearance"


@pytest.mark.parametrize(("actor", "action", "context"), [
    ("admin", "kickMembers", None), ("admin", "ban", None),
    ("admin", "changeScope", {"newScope": "participant"}), ("moderator", "kickMembers", None),
    ("participant", "sendMessage", None)])
def test_nobody_acts_on_the_owner(shared_server: Server, world: World, actor: str, action: str,
                                  context: dict[str, Any] | None) -> None:
    decision = shared_server.authorize(world.uids[actor], action, guid=world.guid, target=world.uids["owner"],
                                       context=context)
    if action == "sendMessage":  # not an action on a member: the target is only a fact
        assert decision["allowed"] is True, decision
        return
    assert decision["allowed"] is False, decision
    assert decision["code"] in {"ERR_GROUP_NO_CLEARANCE", "ERR_GROUP_NO_SCOPE_CLEARANCE", "ERR_PERMISSION_DENIED"}
    if actor == "admin":
        assert decision["code"] == ("ERR_GROUP_NO_SCOPE_CLEARANCE" if action == "changeScope"
                                    else "ERR_GROUP_NO_CLEARANCE"), decision


OWNER_MAY = [
    ("changeScope", "admin", {"newScope": "participant"}),
    ("changeScope", "admin2", {"newScope": "moderator"}),
    ("changeScope", "moderator", {"newScope": "admin"}),
    ("changeScope", "participant", {"newScope": "admin"}),
    ("addMembers", "outsider", {"newScope": "admin"}),
    ("kickMembers", "admin", None),
    ("kickMembers", "moderator", None),
    ("kickMembers", "participant", None),
    ("ban", "admin", None),
    ("ban", "moderator", None),
    ("ban", "participant", None),
    ("unban", "banned", None),
    ("editGroup", None, None),
    ("deleteGroup", None, None),
    ("listBannedUsers", None, None),
    ("sendMessage", None, None),
    ("initiateCall", None, None),
    ("joinCall", None, None),
    ("listMessages", None, None),
]


@pytest.mark.parametrize(("action", "target", "context"), OWNER_MAY,
                         ids=[f"{a}-{t or 'group'}" for a, t, _ in OWNER_MAY])
def test_owner_may_do_anything_in_its_group(shared_server: Server, world: World, action: str,
                                            target: str | None, context: dict[str, Any] | None) -> None:
    decision = shared_server.authorize(world.uids["owner"], action, guid=world.guid,
                                       target=world.uids[target] if target else None, context=context)
    assert decision["allowed"] is True, decision
    assert decision["scope"] == "owner"
    assert "owns group" in decision["reason"]


@pytest.mark.parametrize("new_scope", ["participant", "moderator"])
def test_owner_may_not_change_its_own_scope(shared_server: Server, world: World, new_scope: str) -> None:
    """product.md §1: "Acting on oneself with changeScope is refused" - the owner included.

    Regression: at 5f1a7ae the engine allowed the owner before looking at the target (fixed in 3926d29).
    """
    owner = world.uids["owner"]
    decision = shared_server.authorize(owner, "changeScope", guid=world.guid, target=owner,
                                       context={"newScope": new_scope})
    assert (decision["allowed"], decision.get("code")) == (False, "ERR_GROUP_NO_SELF_ACTION"), (
        f"the owner may change its own scope: {decision}")


@pytest.mark.parametrize("scope", ["admin", "moderator"])
def test_members_may_not_change_their_own_scope(shared_server: Server, world: World, scope: str) -> None:
    uid = world.uids[scope]
    decision = shared_server.authorize(uid, "changeScope", guid=world.guid, target=uid,
                                       context={"newScope": "participant"})
    assert (decision["allowed"], decision.get("code")) == SELF_ACTION, decision


def test_change_scope_needs_new_scope_and_target(shared_server: Server, world: World) -> None:
    admin, participant = world.uids["admin"], world.uids["participant"]
    no_scope = shared_server.post("/authorize", {"uid": admin, "action": "changeScope", "guid": world.guid,
                                                 "target": participant})
    assert no_scope.status_code == 400, no_scope.text
    assert no_scope.json()["error"]["code"] == "ERR_BAD_REQUEST"
    assert "context.newScope" in no_scope.json()["error"]["details"]
    no_target = shared_server.post("/authorize", {"uid": admin, "action": "changeScope", "guid": world.guid,
                                                  "context": {"newScope": "moderator"}})
    assert no_target.status_code == 400, no_target.text
    assert "target" in no_target.json()["error"]["details"]
    bad_scope = shared_server.post("/authorize", {"uid": admin, "action": "changeScope", "guid": world.guid,
                                                  "target": participant, "context": {"newScope": "owner"}})
    assert bad_scope.status_code == 400, bad_scope.text
    assert "context.newScope" in bad_scope.json()["error"]["details"]


def test_moderator_may_not_promote_above_itself(shared_server: Server, world: World) -> None:
    decision = shared_server.authorize(world.uids["moderator"], "changeScope", guid=world.guid,
                                       target=world.uids["participant"], context={"newScope": "admin"})
    assert (decision["allowed"], decision.get("code")) == NO_SCOPE_CLEARANCE, decision


# -- the role layer comes first, even for admins and owners ---------------------------------------
@pytest.fixture(scope="module")
def no_send_role(shared_server: Server) -> str:
    role = unique("nosend")
    shared_server.ok("POST", "/roles", {"role": role, "name": "No sending"})
    body = shared_server.ok("PUT", f"/roles/{role}/permissions", {"permissions": {"sendMessage": "deny"}})
    assert body["data"]["permissions"] == {"sendMessage": "deny"}
    return role


@pytest.mark.parametrize("member", ["admin", "owner"])
def test_role_layer_denies_before_scope_and_ownership(shared_server: Server, no_send_role: str, member: str) -> None:
    guid, owner, admin = unique("grp"), unique("owner"), unique("admin")
    shared_server.ok("PUT", f"/groups/{guid}", {"owner": owner})
    shared_server.ok("PUT", f"/groups/{guid}/members/{admin}", {"scope": "admin"})
    uid = owner if member == "owner" else admin
    before = shared_server.authorize(uid, "sendMessage", guid=guid)
    assert before["allowed"] is True, before
    user = shared_server.ok("PUT", f"/users/{uid}", {"role": no_send_role})
    assert user["data"]["role"] == no_send_role
    decision = shared_server.authorize(uid, "sendMessage", guid=guid, context={"messageType": "text"})
    assert decision["allowed"] is False, decision
    assert decision["layer"] == "role"
    assert decision["code"] == "ERR_PERMISSION_DENIED"
    assert decision["role"] == no_send_role
    assert "sendMessage" in decision["reason"] and "runtime" in decision["reason"], decision
    # the rest of the group's privileges are untouched by that role
    other = shared_server.authorize(uid, "editGroup", guid=guid)
    assert other["allowed"] is True, other
