"""Acknowledged writes survive a crash: SIGKILL the server, restart on the same data folder."""
from __future__ import annotations

from typing import Any

from conftest import Server, unique


def snapshot(srv: Server, world: dict[str, str]) -> dict[str, Any]:
    """Everything the API shows about the world, minus per-request noise (decisionId)."""
    role, guid = world["role"], world["guid"]
    views: dict[str, Any] = {
        "role": srv.ok("GET", f"/roles/{role}")["data"],
        "support": srv.ok("GET", "/roles/support")["data"],
        "roles": [r["role"] for r in srv.ok("GET", "/roles")["data"]],
        "permissions": {p["id"]: (p["value"], p["source"])
                        for p in srv.ok("GET", f"/roles/{role}/permissions?perPage=1000")["data"]},
        "group": srv.ok("GET", f"/groups/{guid}")["data"],
        "users": {k: srv.ok("GET", f"/users/{world[k]}")["data"] for k in ("owner", "writer", "mod", "member", "agent")},
        "revision": srv.revision(),
    }
    checks = {
        "writer sends text": dict(uid=world["writer"], action="sendMessage", context={"messageType": "text"}),
        "writer sends image": dict(uid=world["writer"], action="sendMessage", context={"messageType": "image"}),
        "writer creates group": dict(uid=world["writer"], action="createGroup"),
        "agent creates group": dict(uid=world["agent"], action="createGroup"),
        "mod kicks member": dict(uid=world["mod"], action="kickMembers", guid=guid, target=world["member"]),
        "member kicks mod": dict(uid=world["member"], action="kickMembers", guid=guid, target=world["mod"]),
        "owner deletes group": dict(uid=world["owner"], action="deleteGroup", guid=guid),
        "kicked user sends": dict(uid=world["kicked"], action="sendMessage", guid=guid),
        "mod edits group": dict(uid=world["mod"], action="editGroup", guid=guid),
    }
    decisions = {}
    for name, request in checks.items():
        decision = srv.authorize(**request)
        decisions[name] = {k: v for k, v in decision.items() if k != "decisionId"}
    views["decisions"] = decisions
    return views


def build_world(srv: Server) -> tuple[dict[str, str], int]:
    world = {"role": unique("writer-role"), "guid": unique("grp"), "owner": unique("owner"), "writer": unique("writer"),
             "mod": unique("mod"), "member": unique("member"), "agent": unique("agent"), "kicked": unique("kicked")}
    revisions = []
    revisions.append(srv.ok("POST", "/roles", {"role": world["role"], "name": "Writer", "description": "durable",
                                               "metadata": {"team": "qa"}})["revision"])
    revisions.append(srv.ok("PUT", f"/roles/{world['role']}/permissions",
                            {"permissions": {"createGroup": "deny",
                                             "sendMessage.allowedMessageTypes": ["text"]}})["revision"])
    revisions.append(srv.ok("PUT", "/roles/support", {"name": "Support (edited)"})["revision"])
    revisions.append(srv.ok("PUT", f"/users/{world['writer']}", {"role": world["role"]})["revision"])
    revisions.append(srv.ok("PUT", f"/users/{world['agent']}", {"role": "support"})["revision"])
    revisions.append(srv.ok("PUT", f"/groups/{world['guid']}", {"owner": world["owner"]})["revision"])
    revisions.append(srv.ok("PUT", f"/groups/{world['guid']}/members/{world['mod']}", {"scope": "moderator"})["revision"])
    revisions.append(srv.ok("PUT", f"/groups/{world['guid']}/members/{world['member']}",
                            {"scope": "participant"})["revision"])
    revisions.append(srv.ok("PUT", f"/groups/{world['guid']}/members/{world['kicked']}",
                            {"scope": "participant"})["revision"])
    revisions.append(srv.ok("DELETE", f"/groups/{world['guid']}/members/{world['kicked']}")["revision"])
    assert revisions == sorted(revisions) and len(set(revisions)) == len(revisions), revisions
    return world, revisions[-1]


def test_acknowledged_writes_survive_sigkill(server: Server) -> None:
    world, last = build_world(server)
    before = snapshot(server, world)
    assert before["revision"] == last
    assert before["decisions"]["writer sends text"]["allowed"] is True
    assert before["decisions"]["writer sends image"]["allowed"] is False
    assert before["decisions"]["writer creates group"]["allowed"] is False
    assert before["decisions"]["agent creates group"]["allowed"] is False
    assert before["decisions"]["mod kicks member"]["allowed"] is True
    assert before["decisions"]["member kicks mod"]["allowed"] is False
    assert before["decisions"]["owner deletes group"]["allowed"] is True
    assert before["decisions"]["kicked user sends"]["code"] == "ERR_GROUP_NOT_JOINED"
    assert before["group"]["membersCount"] == 3
    assert before["users"]["writer"]["role"] == world["role"]

    server.kill()
    assert not server.running
    server.start()
    after = snapshot(server, world)
    assert after == before

    # and once more, right after a last acknowledged write with no read in between
    moved = server.ok("PUT", f"/users/{world['writer']}", {"role": "restricted"})
    server.kill()
    server.start()
    assert server.revision() == moved["revision"] == last + 1
    assert server.ok("GET", f"/users/{world['writer']}")["data"]["role"] == "restricted"
    decision = server.authorize(world["writer"], "joinGroup")
    assert decision["allowed"] is False and decision["role"] == "restricted"


def test_deletes_survive_sigkill(server: Server) -> None:
    role, uid, guid, owner = unique("gone"), unique("user"), unique("grp"), unique("owner")
    server.ok("POST", "/roles", {"role": role, "name": "Soon gone"})
    server.ok("PUT", f"/users/{uid}", {"role": role})
    server.ok("PUT", f"/groups/{guid}", {"owner": owner})
    server.ok("DELETE", f"/roles/{role}")
    last = server.ok("DELETE", f"/groups/{guid}")["revision"]
    server.kill()
    server.start()
    assert server.revision() == last
    assert server.get(f"/roles/{role}").status_code == 404
    assert server.get(f"/groups/{guid}").status_code == 404
    assert server.ok("GET", f"/users/{uid}")["data"] == {"uid": uid, "role": "default", "assigned": False}
    assert server.authorize(uid, "sendMessage")["role"] == "default"
    assert server.authorize(owner, "sendMessage", guid=guid)["code"] == "ERR_GUID_NOT_FOUND"
