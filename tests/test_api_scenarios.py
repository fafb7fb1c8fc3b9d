"""End-to-end scenarios through the HTTP API (issue 3), each ending in /authorize calls that prove
the change took effect. Check-and-change (`onBehalfOf`) refusals must carry the same code and
reason as the decision /authorize gives for that user and action, and change nothing.
"""
from __future__ import annotations

from typing import Any

import pytest
import requests
from conftest import Server, unique


# -- helpers ----------------------------------------------------------------------------------------
def members_of(srv: Server, guid: str) -> dict[str, str]:
    body = srv.ok("GET", f"/groups/{guid}/members?perPage=1000")
    assert body["meta"]["pagination"]["total_pages"] == 1
    return {m["uid"]: m["scope"] for m in body["data"]}


def banned_in(srv: Server, guid: str) -> list[str]:
    return [b["uid"] for b in srv.ok("GET", f"/groups/{guid}/bannedusers?perPage=1000")["data"]]


def as_user(uid: str) -> dict[str, str]:
    return {"onBehalfOf": uid}


def decision(srv: Server, uid: str, action: str, guid: str | None = None, target: str | None = None,
             **context: Any) -> tuple[bool, str | None]:
    answer = srv.authorize(uid, action, guid=guid, target=target, context=context or None)
    return answer["allowed"], answer.get("code")


def refused_as(srv: Server, response: requests.Response, uid: str, action: str, guid: str,
               target: str | None = None, code: str | None = None, **context: Any) -> dict[str, Any]:
    """A 403 whose code and reason are those of the decision /authorize gives for (uid, action, ...)."""
    assert response.status_code == 403, f"{response.request.method} {response.url} -> {response.status_code} {response.text}"
    error = response.json()["error"]
    answer = srv.authorize(uid, action, guid=guid, target=target, context=context or None)
    assert answer["allowed"] is False, answer
    assert error["code"] == answer["code"], (error, answer)
    assert error["message"] == answer["reason"], (error, answer)
    if code is not None:
        assert error["code"] == code, error
    return error  # type: ignore[no-any-return]


@pytest.fixture
def team(shared_server: Server) -> dict[str, str]:
    """A group with an owner, two admins, two moderators and three participants."""
    srv = shared_server
    ids = {"guid": unique("team"), "owner": unique("owner"), "admin": unique("adm"), "admin2": unique("adm2"),
           "mod": unique("mod"), "mod2": unique("mod2"), "part": unique("part"), "part2": unique("part2"),
           "part3": unique("part3")}
    srv.ok("PUT", f"/groups/{ids['guid']}", {"owner": ids["owner"]})
    added = srv.ok("POST", f"/groups/{ids['guid']}/members", {
        "admins": [ids["admin"], ids["admin2"]], "moderators": [ids["mod"], ids["mod2"]],
        "participants": [ids["part"], ids["part2"], ids["part3"]]})
    assert all(r["success"] for lst in added["data"].values() for r in lst.values()), added
    return ids


# -- an override for one group ----------------------------------------------------------------------
def test_override_lets_participants_of_one_group_add_members(shared_server: Server) -> None:
    srv = shared_server
    g1, g2, owner, part, newcomer = unique("g1"), unique("g2"), unique("owner"), unique("part"), unique("new")
    for guid in (g1, g2):
        srv.ok("PUT", f"/groups/{guid}", {"owner": owner})
        srv.ok("PUT", f"/groups/{guid}/members/{part}", {"scope": "participant"})
    assert decision(srv, part, "addMembers", g1, newcomer) == (False, "ERR_PERMISSION_DENIED")
    assert decision(srv, part, "addMembers", g2, newcomer) == (False, "ERR_PERMISSION_DENIED")

    written = srv.ok("PUT", f"/groups/{g1}/scopes/participant/permissions", {"permissions": {"addMembers": "allow"}})
    assert written["data"]["permissions"] == {"addMembers": "allow"}
    allowed = srv.authorize(part, "addMembers", guid=g1, target=newcomer)
    assert allowed["allowed"] is True and allowed["scope"] == "participant", allowed
    assert "group override" in allowed["reason"], allowed
    assert allowed["revision"] >= written["revision"]
    denied = srv.authorize(part, "addMembers", guid=g2, target=newcomer)
    assert (denied["allowed"], denied["code"], denied["layer"]) == (False, "ERR_PERMISSION_DENIED", "scope"), denied
    assert "scopes.yaml" in denied["reason"], denied
    # the other scopes of g1 keep their defaults (a moderator still may not add)
    mod = unique("mod")
    srv.ok("PUT", f"/groups/{g1}/members/{mod}", {"scope": "moderator"})
    assert decision(srv, mod, "addMembers", g1, newcomer) == (False, "ERR_PERMISSION_DENIED")
    # a participant may add, but not above its own scope
    assert decision(srv, part, "addMembers", g1, newcomer, newScope="moderator") == (False, "ERR_GROUP_NO_CLEARANCE")

    # check-and-change follows the same answers
    in_g1 = srv.ok("POST", f"/groups/{g1}/members", {"participants": [newcomer]}, headers=as_user(part))
    assert in_g1["data"] == {"participants": {newcomer: {"success": True}}}
    in_g2 = srv.ok("POST", f"/groups/{g2}/members", {"participants": [newcomer]}, headers=as_user(part))
    assert in_g2["data"]["participants"][newcomer]["error"]["code"] == "ERR_PERMISSION_DENIED"
    assert in_g2["revision"] == in_g1["revision"]
    assert newcomer in members_of(srv, g1) and newcomer not in members_of(srv, g2)
    assert decision(srv, newcomer, "sendMessage", g1, messageType="text") == (True, None)
    assert decision(srv, newcomer, "sendMessage", g2, messageType="text") == (False, "ERR_GROUP_NOT_JOINED")

    # unsetting the override brings the default back
    srv.ok("DELETE", f"/groups/{g1}/scopes/participant/permissions/addMembers")
    assert decision(srv, part, "addMembers", g1, unique("late")) == (False, "ERR_PERMISSION_DENIED")


# -- restricted features ----------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["u.createGroup", "createGroup"])
def test_restricted_feature_stops_a_role_from_creating_groups(shared_server: Server, key: str) -> None:
    srv = shared_server
    role, uid, other = unique("creator"), unique("user"), unique("other")
    srv.ok("POST", "/roles", {"role": role, "name": "Creators"})
    try:
        srv.ok("PUT", f"/users/{uid}", {"role": role})
        assert decision(srv, uid, "createGroup") == (True, None)
        restricted = srv.ok("POST", f"/roles/{role}/restrictedfeatures", {"featuresToRestrict": [key]})
        answer = srv.authorize(uid, "createGroup")
        assert (answer["allowed"], answer["code"], answer["layer"]) == (False, "ERR_PERMISSION_DENIED", "role"), answer
        assert "u.createGroup" in answer["reason"] or "createGroup" in answer["reason"], answer
        assert answer["revision"] >= restricted["revision"]
        # other actions of the role and other roles are untouched
        assert decision(srv, uid, "sendMessage", messageType="text") == (True, None)
        assert decision(srv, other, "createGroup") == (True, None)
        # allowing it again restores it
        srv.ok("DELETE", f"/roles/{role}/restrictedfeatures", {"featuresToAllow": ["createGroup" if key.startswith("u.")
                                                                                   else "u.createGroup"]})
        assert decision(srv, uid, "createGroup") == (True, None)
        srv.ok("POST", f"/roles/{role}/restrictedfeatures", {"featuresToRestrict": [key, "u.listUsers"]})
        assert decision(srv, uid, "createGroup") == (False, "ERR_PERMISSION_DENIED")
        assert decision(srv, uid, "listUsers") == (False, "ERR_PERMISSION_DENIED")
        srv.ok("DELETE", f"/roles/{role}/restrictedfeatures", {"allowAll": True})
        assert decision(srv, uid, "createGroup") == (True, None)
        assert decision(srv, uid, "listUsers") == (True, None)
    finally:
        srv.delete(f"/roles/{role}")


def test_restricted_feature_also_gates_check_and_change(shared_server: Server, team: dict[str, str]) -> None:
    """A role-level restriction refuses a member operation done on behalf of a group admin."""
    srv, guid = shared_server, team["guid"]
    role = unique("nokick")
    srv.ok("POST", "/roles", {"role": role, "name": "No kicking"})
    try:
        srv.ok("PUT", f"/users/{team['admin']}", {"role": role})
        srv.ok("POST", f"/roles/{role}/restrictedfeatures", {"featuresToRestrict": ["u.kickMember"]})
        before = members_of(srv, guid)
        response = srv.delete(f"/groups/{guid}/members/{team['part']}", headers=as_user(team["admin"]))
        error = refused_as(srv, response, team["admin"], "kickMembers", guid, team["part"], code="ERR_PERMISSION_DENIED")
        assert "kickMember" in error["message"], error
        assert members_of(srv, guid) == before
        srv.ok("DELETE", f"/roles/{role}/restrictedfeatures", {"allowAll": True})
        srv.ok("DELETE", f"/groups/{guid}/members/{team['part']}", headers=as_user(team["admin"]))
        assert decision(srv, team["part"], "sendMessage", guid, messageType="text") == (False, "ERR_GROUP_NOT_JOINED")
    finally:
        srv.delete(f"/roles/{role}")


# -- deleting a role ----------------------------------------------------------------------------------
def test_deleting_a_role_moves_its_users_to_default(shared_server: Server) -> None:
    srv = shared_server
    role = unique("quiet")
    holders, bystander = [unique("holder") for _ in range(3)], unique("bystander")
    srv.ok("POST", "/roles", {"role": role, "name": "Quiet"})
    srv.ok("PUT", f"/roles/{role}/permissions", {"permissions": {"sendMessage": "deny", "createGroup": "deny"}})
    srv.ok("POST", f"/roles/{role}/restrictedfeatures", {"featuresToRestrict": ["u.listUsers"]})
    for uid in holders:
        srv.ok("PUT", f"/users/{uid}", {"role": role})
    srv.ok("PUT", f"/users/{bystander}", {"role": "support"})
    for uid in holders:
        answer = srv.authorize(uid, "sendMessage", context={"messageType": "text"})
        assert (answer["allowed"], answer["role"]) == (False, role), answer
        assert decision(srv, uid, "listUsers") == (False, "ERR_PERMISSION_DENIED")

    deleted = srv.ok("DELETE", f"/roles/{role}")
    assert deleted["data"]["usersMovedToDefault"] == 3
    for uid in holders:
        assert srv.ok("GET", f"/users/{uid}")["data"] == {"uid": uid, "role": "default", "assigned": False}
        for action in ("sendMessage", "createGroup", "listUsers"):
            answer = srv.authorize(uid, action, context={"messageType": "text"} if action == "sendMessage" else None)
            assert (answer["allowed"], answer["role"]) == (True, "default"), (action, answer)
            assert answer["revision"] >= deleted["revision"]
    assert srv.authorize(bystander, "createGroup")["role"] == "support"
    # a new role of the same name starts empty: nobody holds it, nothing is restricted
    srv.ok("POST", "/roles", {"role": role, "name": "Quiet again"})
    try:
        assert srv.ok("GET", f"/roles/{role}/restrictedfeatures")["data"] == []
        explicit = srv.ok("PUT", f"/roles/{role}/permissions", {"permissions": {"joinCall": "allow"}})
        assert explicit["data"]["permissions"] == {"joinCall": "allow"}
        assert srv.authorize(holders[0], "sendMessage", context={"messageType": "text"})["role"] == "default"
    finally:
        srv.delete(f"/roles/{role}")


# -- a moderator acting on behalf of itself ----------------------------------------------------------
def test_moderator_promotes_a_participant(shared_server: Server, team: dict[str, str]) -> None:
    srv, guid, mod, part = shared_server, team["guid"], team["mod"], team["part"]
    assert decision(srv, part, "kickMembers", guid, team["part2"]) == (False, "ERR_PERMISSION_DENIED")
    body = srv.ok("PUT", f"/groups/{guid}/members/{part}", {"scope": "moderator"}, headers=as_user(mod))
    assert body["data"] == {"guid": guid, "uid": part, "scope": "moderator"}
    assert members_of(srv, guid)[part] == "moderator"
    answer = srv.authorize(part, "kickMembers", guid=guid, target=team["part2"])
    assert (answer["allowed"], answer["scope"]) == (True, "moderator"), answer
    assert answer["revision"] >= body["revision"]


def test_moderator_may_not_demote_an_admin(shared_server: Server, team: dict[str, str]) -> None:
    srv, guid, mod, admin = shared_server, team["guid"], team["mod"], team["admin"]
    before, revision = members_of(srv, guid), srv.revision()
    response = srv.put(f"/groups/{guid}/members/{admin}", {"scope": "participant"}, headers=as_user(mod))
    refused_as(srv, response, mod, "changeScope", guid, admin, code="ERR_GROUP_NO_SCOPE_CLEARANCE",
               newScope="participant")
    assert members_of(srv, guid) == before
    assert srv.revision() == revision
    answer = srv.authorize(admin, "deleteGroup", guid=guid)
    assert (answer["allowed"], answer["scope"]) == (True, "admin"), answer
    # nor promote anyone above its own scope, nor act on another moderator
    response = srv.put(f"/groups/{guid}/members/{team['part']}", {"scope": "admin"}, headers=as_user(mod))
    refused_as(srv, response, mod, "changeScope", guid, team["part"], code="ERR_GROUP_NO_SCOPE_CLEARANCE",
               newScope="admin")
    response = srv.put(f"/groups/{guid}/members/{team['mod2']}", {"scope": "participant"}, headers=as_user(mod))
    refused_as(srv, response, mod, "changeScope", guid, team["mod2"], code="ERR_GROUP_NO_SCOPE_CLEARANCE",
               newScope="participant")
    assert members_of(srv, guid) == before and srv.revision() == revision


def test_moderator_may_not_change_its_own_scope(shared_server: Server, team: dict[str, str]) -> None:
    srv, guid, mod = shared_server, team["guid"], team["mod"]
    before, revision = members_of(srv, guid), srv.revision()
    for scope in ("participant", "admin"):
        response = srv.put(f"/groups/{guid}/members/{mod}", {"scope": scope}, headers=as_user(mod))
        refused_as(srv, response, mod, "changeScope", guid, mod, code="ERR_GROUP_NO_SELF_ACTION", newScope=scope)
    assert members_of(srv, guid) == before and srv.revision() == revision
    assert srv.authorize(mod, "editGroup", guid=guid)["scope"] == "moderator"


def test_only_the_owner_changes_an_admins_scope(shared_server: Server, team: dict[str, str]) -> None:
    srv, guid = shared_server, team["guid"]
    before = members_of(srv, guid)
    response = srv.put(f"/groups/{guid}/members/{team['admin2']}", {"scope": "moderator"}, headers=as_user(team["admin"]))
    refused_as(srv, response, team["admin"], "changeScope", guid, team["admin2"], newScope="moderator")
    assert members_of(srv, guid) == before
    srv.ok("PUT", f"/groups/{guid}/members/{team['admin2']}", {"scope": "moderator"}, headers=as_user(team["owner"]))
    assert members_of(srv, guid)[team["admin2"]] == "moderator"
    assert srv.authorize(team["admin2"], "deleteGroup", guid=guid)["allowed"] is False


# -- onBehalfOf on kick, ban, unban, add and on the group -------------------------------------------
def test_on_behalf_of_kick(shared_server: Server, team: dict[str, str]) -> None:
    srv, guid = shared_server, team["guid"]
    before, revision = members_of(srv, guid), srv.revision()
    cases = [  # (actor, target, expected code)
        (team["part"], team["part2"], "ERR_PERMISSION_DENIED"),     # participants may not kick
        (team["mod"], team["admin"], "ERR_GROUP_NO_CLEARANCE"),     # moderators kick participants only
        (team["mod"], team["mod2"], "ERR_GROUP_NO_CLEARANCE"),
        (team["admin"], team["admin2"], "ERR_GROUP_NO_CLEARANCE"),  # an admin does not outrank an admin
        (unique("outsider"), team["part"], "ERR_GROUP_NOT_JOINED"),
    ]
    for actor, target, code in cases:
        response = srv.delete(f"/groups/{guid}/members/{target}", headers=as_user(actor))
        refused_as(srv, response, actor, "kickMembers", guid, target, code=code)
    assert members_of(srv, guid) == before and srv.revision() == revision

    srv.ok("DELETE", f"/groups/{guid}/members/{team['part']}", headers=as_user(team["mod"]))
    srv.ok("DELETE", f"/groups/{guid}/members/{team['mod2']}", headers=as_user(team["admin"]))
    srv.ok("DELETE", f"/groups/{guid}/members/{team['admin2']}", headers=as_user(team["owner"]))
    left = members_of(srv, guid)
    assert not {team["part"], team["mod2"], team["admin2"]} & set(left)
    for uid in (team["part"], team["mod2"], team["admin2"]):
        assert decision(srv, uid, "sendMessage", guid, messageType="text") == (False, "ERR_GROUP_NOT_JOINED")
    # a kick is not a ban: the member may be added back
    srv.ok("PUT", f"/groups/{guid}/members/{team['part']}", {"scope": "participant"})
    assert decision(srv, team["part"], "sendMessage", guid, messageType="text") == (True, None)


def test_on_behalf_of_ban_and_unban(shared_server: Server, team: dict[str, str]) -> None:
    srv, guid = shared_server, team["guid"]
    before, revision = members_of(srv, guid), srv.revision()
    for actor, target, code in [(team["part"], team["part2"], "ERR_PERMISSION_DENIED"),
                                (team["mod"], team["mod2"], "ERR_GROUP_NO_CLEARANCE"),
                                (team["mod"], team["admin"], "ERR_GROUP_NO_CLEARANCE"),
                                (unique("outsider"), team["part"], "ERR_GROUP_NOT_JOINED")]:
        response = srv.post(f"/groups/{guid}/bannedusers/{target}", headers=as_user(actor))
        refused_as(srv, response, actor, "ban", guid, target, code=code)
    assert members_of(srv, guid) == before and banned_in(srv, guid) == [] and srv.revision() == revision

    srv.ok("POST", f"/groups/{guid}/bannedusers/{team['part2']}", headers=as_user(team["mod"]))
    assert team["part2"] not in members_of(srv, guid) and banned_in(srv, guid) == [team["part2"]]
    assert decision(srv, team["part2"], "sendMessage", guid, messageType="text") == (False, "ERR_BANNED_GROUPMEMBER")
    # a banned user can't be added back, whoever asks
    added = srv.ok("POST", f"/groups/{guid}/members", {"participants": [team["part2"]]}, headers=as_user(team["owner"]))
    assert added["data"]["participants"][team["part2"]]["error"]["code"] == "ERR_BANNED_GROUPMEMBER"
    # unban: participants may not, moderators may
    revision = srv.revision()
    response = srv.delete(f"/groups/{guid}/bannedusers/{team['part2']}", headers=as_user(team["part3"]))
    refused_as(srv, response, team["part3"], "unban", guid, team["part2"], code="ERR_PERMISSION_DENIED")
    assert banned_in(srv, guid) == [team["part2"]] and srv.revision() == revision
    srv.ok("DELETE", f"/groups/{guid}/bannedusers/{team['part2']}", headers=as_user(team["mod"]))
    assert banned_in(srv, guid) == []
    assert decision(srv, team["part2"], "sendMessage", guid, messageType="text") == (False, "ERR_GROUP_NOT_JOINED")
    srv.ok("POST", f"/groups/{guid}/members", {"participants": [team["part2"]]})
    assert decision(srv, team["part2"], "sendMessage", guid, messageType="text") == (True, None)
    # more than one uid on behalf of someone is a bulk operation: an owner's or admin's
    bulk = {"usersToBan": [team["part3"], team["admin"]]}
    response = srv.post(f"/groups/{guid}/members", bulk, headers=as_user(team["mod"]))
    refused_as(srv, response, team["mod"], "massMemberOperate", guid, code="ERR_GROUP_NO_ADMIN_SCOPE")
    # ... and then decided per user: an admin may ban a participant, not the owner
    mixed = srv.ok("POST", f"/groups/{guid}/members", {"usersToBan": [team["part3"], team["owner"]]},
                   headers=as_user(team["admin"]))
    assert mixed["data"]["usersToBan"][team["part3"]] == {"success": True}
    assert mixed["data"]["usersToBan"][team["owner"]]["error"]["code"] == "ERR_GROUP_NO_CLEARANCE"
    assert decision(srv, team["part3"], "sendMessage", guid, messageType="text") == (False, "ERR_BANNED_GROUPMEMBER")
    assert decision(srv, team["admin"], "sendMessage", guid, messageType="text") == (True, None)


def test_on_behalf_of_add(shared_server: Server, team: dict[str, str]) -> None:
    srv, guid = shared_server, team["guid"]
    newcomers = {k: unique(k) for k in ("p", "m", "a", "x", "y")}
    revision = srv.revision()
    for actor, code in [(team["part"], "ERR_PERMISSION_DENIED"), (team["mod"], "ERR_PERMISSION_DENIED"),
                        (unique("outsider"), "ERR_GROUP_NOT_JOINED")]:
        body = srv.ok("POST", f"/groups/{guid}/members", {"participants": [newcomers["x"]]}, headers=as_user(actor))
        result = body["data"]["participants"][newcomers["x"]]
        answer = srv.authorize(actor, "addMembers", guid=guid, target=newcomers["x"])
        assert (result["success"], result["error"]["code"]) == (False, code), result
        assert (result["error"]["code"], result["error"]["message"]) == (answer["code"], answer["reason"])
        response = srv.put(f"/groups/{guid}/members/{newcomers['y']}", {"scope": "participant"}, headers=as_user(actor))
        refused_as(srv, response, actor, "addMembers", guid, newcomers["y"], code=code, newScope="participant")
    assert srv.revision() == revision
    assert newcomers["x"] not in members_of(srv, guid)
    # an admin adds at or below its own scope
    body = srv.ok("POST", f"/groups/{guid}/members", {"participants": [newcomers["p"]], "moderators": [newcomers["m"]],
                                                     "admins": [newcomers["a"]]}, headers=as_user(team["admin"]))
    assert all(r["success"] for lst in body["data"].values() for r in lst.values()), body
    members = members_of(srv, guid)
    assert (members[newcomers["p"]], members[newcomers["m"]], members[newcomers["a"]]) == (
        "participant", "moderator", "admin")
    assert srv.authorize(newcomers["m"], "kickMembers", guid=guid, target=newcomers["p"])["allowed"] is True


def test_on_behalf_of_group_update_and_delete(shared_server: Server, team: dict[str, str]) -> None:
    srv, guid = shared_server, team["guid"]
    revision = srv.revision()
    for actor, code in [(team["part"], "ERR_PERMISSION_DENIED"), (unique("outsider"), "ERR_GROUP_NOT_JOINED")]:
        response = srv.put(f"/groups/{guid}", {"owner": team["owner"]}, headers=as_user(actor))
        refused_as(srv, response, actor, "editGroup", guid, code=code)
    for actor, code in [(team["part"], "ERR_PERMISSION_DENIED"), (team["mod"], "ERR_PERMISSION_DENIED"),
                        (unique("outsider"), "ERR_GROUP_NOT_JOINED")]:
        response = srv.delete(f"/groups/{guid}", headers=as_user(actor))
        refused_as(srv, response, actor, "deleteGroup", guid, code=code)
    assert srv.revision() == revision
    assert srv.ok("GET", f"/groups/{guid}")["data"]["owner"] == team["owner"]
    # the owner hands the group over; the new owner may do anything in it
    moved = srv.ok("PUT", f"/groups/{guid}", {"owner": team["admin"]}, headers=as_user(team["owner"]))
    assert moved["data"]["owner"] == team["admin"]
    answer = srv.authorize(team["admin"], "kickMembers", guid=guid, target=team["admin2"])
    assert answer["allowed"] is True and answer["scope"] == "owner", answer
    # an admin may delete the group; then nobody is a member of it
    srv.ok("DELETE", f"/groups/{guid}", headers=as_user(team["admin2"]))
    assert srv.get(f"/groups/{guid}").status_code == 404
    for uid in (team["owner"], team["admin"], team["part"]):
        assert decision(srv, uid, "sendMessage", guid, messageType="text") == (False, "ERR_GUID_NOT_FOUND")


def test_a_moderator_may_not_make_itself_owner(shared_server: Server, team: dict[str, str]) -> None:
    """Changing a group's owner is a transfer of ownership: owner only (spec §4.4, `patchOwner`). A moderator
    may edit the group, but must not take it over and so gain clearance over its admins."""
    srv, guid, mod = shared_server, team["guid"], team["mod"]
    revision = srv.revision()
    response = srv.put(f"/groups/{guid}", {"owner": mod}, headers=as_user(mod))
    assert response.status_code == 403, response.text
    assert srv.ok("GET", f"/groups/{guid}")["data"]["owner"] == team["owner"]
    assert srv.revision() == revision
    answer = srv.authorize(mod, "kickMembers", guid=guid, target=team["admin"])
    assert (answer["allowed"], answer.get("code")) == (False, "ERR_GROUP_NO_CLEARANCE"), answer


# -- the change log -----------------------------------------------------------------------------------
def test_change_log_records_actor_ops_before_and_revisions(shared_server: Server) -> None:
    srv = shared_server
    start = srv.revision()
    role, uid, guid, owner, mod = unique("logged"), unique("user"), unique("grp"), unique("owner"), unique("mod")
    steps: list[tuple[str, str, Any, dict[str, str] | None]] = [
        ("POST", "/roles", {"role": role, "name": "Logged"}, None),
        ("PUT", f"/roles/{role}/permissions", {"permissions": {"sendMessage": "deny"}}, None),
        ("PUT", f"/roles/{role}/permissions", {"permissions": {"sendMessage": "allow"}}, None),
        ("PUT", f"/users/{uid}", {"role": role}, None),
        ("PUT", f"/groups/{guid}", {"owner": owner}, None),
        ("POST", f"/groups/{guid}/members", {"participants": [uid], "moderators": [mod]}, None),
        ("PUT", f"/groups/{guid}/members/{uid}", {"scope": "moderator"}, None),
        ("POST", f"/groups/{guid}/bannedusers/{uid}", None, None),
        ("PUT", f"/groups/{guid}/scopes/participant/permissions", {"permissions": {"addMembers": "allow"}}, None),
        ("DELETE", f"/groups/{guid}/bannedusers/{uid}", None, as_user(mod)),
        ("DELETE", f"/roles/{role}", None, None),
    ]
    revisions = []
    for method, path, body, headers in steps:
        revisions.append(srv.ok(method, path, body, headers=headers)["revision"])
        # refused writes in between leave no trace in the log
        assert srv.put(f"/users/{uid}", {"role": unique("ghost")}).status_code == 404
    assert revisions == list(range(start + 1, start + 1 + len(steps))), revisions

    entries = srv.ok("GET", f"/changes?since={start}&perPage=1000")["data"]
    assert [e["revision"] for e in entries] == revisions
    assert all(e["actor"] == "admin" for e in entries), entries
    stamps = [e["at"] for e in entries]
    assert stamps == sorted(stamps)
    ops = [e["ops"] for e in entries]
    assert ops[0][0]["op"] == "put_role" and ops[0][0]["role"] == role and ops[0][0]["before"] == {"record": None}
    assert ops[1] == [{"op": "set_role_permissions", "role": role, "values": {"sendMessage": "deny"},
                       "before": {"sendMessage": None}}]
    assert ops[2] == [{"op": "set_role_permissions", "role": role, "values": {"sendMessage": "allow"},
                       "before": {"sendMessage": "deny"}}]
    assert ops[3] == [{"op": "put_user", "uid": uid, "role": role, "before": {"role": None}}]
    assert [op["op"] for op in ops[4]] == ["put_group", "put_member"]
    assert ops[4][0]["before"]["owner"] is None
    assert sorted((op["uid"], op["scope"], op["before"]["scope"]) for op in ops[5]) == sorted(
        [(uid, "participant", None), (mod, "moderator", None)])
    assert ops[6] == [{"op": "put_member", "guid": guid, "uid": uid, "scope": "moderator",
                       "before": {"scope": "participant", "banned": False}}]
    assert ops[7] == [{"op": "ban", "guid": guid, "uid": uid, "before": {"scope": "moderator", "banned": False}}]
    assert ops[8] == [{"op": "set_scope_permissions", "guid": guid, "scope": "participant",
                       "values": {"addMembers": "allow"}, "before": {"addMembers": None}}]
    assert ops[9] == [{"op": "unban", "guid": guid, "uid": uid, "before": {"scope": None, "banned": True}}]
    assert ops[10][0]["op"] == "delete_role" and ops[10][0]["before"]["users"] == 1
    assert ops[10][0]["before"]["permissions"] == {"sendMessage": "allow"}
    # and the log agrees with what /authorize now decides
    answer = srv.authorize(uid, "sendMessage", guid=guid, context={"messageType": "text"})
    assert (answer["allowed"], answer["code"], answer["role"]) == (False, "ERR_GROUP_NOT_JOINED", "default")
    assert answer["revision"] >= revisions[-1]
    assert srv.authorize(mod, "addMembers", guid=guid, target=unique("n"))["allowed"] is False  # moderator: no override
