"""The HTTP API of the real server: roles, users, decisions, keys, errors, limits and paging."""
from __future__ import annotations

import json
import stat
from typing import Any

import pytest
import requests
from conftest import Server, unique

FILE_ROLES = ["default", "restricted", "support"]  # policies/roles.yaml, sorted as GET /roles lists them


def error_of(response: requests.Response, status: int, code: str) -> dict[str, Any]:
    """Assert an error envelope with that status and code; return the error object."""
    assert response.status_code == status, f"{response.request.method} {response.url} -> {response.status_code} {response.text}"
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"], error
    return error  # type: ignore[no-any-return]


def bad_request(response: requests.Response, field: str) -> dict[str, Any]:
    """A 400 ERR_BAD_REQUEST whose details name `field`."""
    error = error_of(response, 400, "ERR_BAD_REQUEST")
    assert field in error.get("details", {}), error
    assert isinstance(error["details"][field], list) and error["details"][field], error
    return error


def new_role(srv: Server, **fields: Any) -> str:
    role = fields.pop("role", None) or unique("role")
    body = srv.ok("POST", "/roles", {"role": role, "name": fields.pop("name", "A role"), **fields})
    assert isinstance(body["revision"], int)
    return body["data"]["role"]  # type: ignore[no-any-return]


# -- roles and users ----------------------------------------------------------------------------
def test_never_assigned_user_has_the_default_role(shared_server: Server) -> None:
    uid = unique("user")
    user = shared_server.ok("GET", f"/users/{uid}")["data"]
    assert user["uid"] == uid
    assert user["role"] == "default"
    assert user["assigned"] is False
    decision = shared_server.authorize(uid, "sendMessage")
    assert decision["allowed"] is True
    assert decision["role"] == "default"
    assert decision["layer"] == "role"
    assert decision["decisionId"]


def test_default_role_cannot_be_deleted(shared_server: Server) -> None:
    before = shared_server.revision()
    error_of(shared_server.delete("/roles/default"), 403, "ERR_ROLE_DELETE_DENIED")
    assert shared_server.ok("GET", "/roles/default")["data"]["role"] == "default"
    assert shared_server.revision() == before


def test_file_role_edited_at_runtime_but_not_deleted(server: Server) -> None:
    original = server.ok("GET", "/roles/support")["data"]
    assert original["name"] == "Support agent"
    assert original["source"].startswith("policy file")
    body = server.ok("PUT", "/roles/support", {"name": "Support desk"})
    assert body["data"]["name"] == "Support desk"
    assert isinstance(body["revision"], int) and body["revision"] >= 1
    shown = server.ok("GET", "/roles/support")["data"]
    assert shown["name"] == "Support desk"
    assert shown["description"] == original["description"]
    assert "edited at runtime" in shown["source"]
    listed = {r["role"]: r for r in server.ok("GET", "/roles")["data"]}
    assert listed["support"]["name"] == "Support desk"

    revision = server.revision()
    error_of(server.delete("/roles/support"), 403, "ERR_ROLE_DELETE_DENIED")
    assert server.ok("GET", "/roles/support")["data"]["name"] == "Support desk"
    assert server.revision() == revision
    # the file's permissions still apply to the edited role
    uid = unique("agent")
    server.ok("PUT", f"/users/{uid}", {"role": "support"})
    assert server.authorize(uid, "createGroup")["allowed"] is False


def test_deleting_a_runtime_role_moves_its_users_to_default(shared_server: Server) -> None:
    role = new_role(shared_server)
    uid = unique("user")
    assigned = shared_server.ok("PUT", f"/users/{uid}", {"role": role})
    assert assigned["data"] == {"uid": uid, "role": role, "assigned": True}
    assert isinstance(assigned["revision"], int)
    assert shared_server.authorize(uid, "sendMessage")["role"] == role

    deleted = shared_server.ok("DELETE", f"/roles/{role}")
    assert deleted["data"]["success"] is True
    assert deleted["data"]["usersMovedToDefault"] == 1
    assert isinstance(deleted["revision"], int) and deleted["revision"] > assigned["revision"]
    error_of(shared_server.get(f"/roles/{role}"), 404, "ERR_ROLE_NOT_FOUND")
    assert shared_server.ok("GET", f"/users/{uid}")["data"]["role"] == "default"
    decision = shared_server.authorize(uid, "sendMessage")
    assert decision["role"] == "default"
    assert decision["allowed"] is True


def test_role_ids_are_lowercased(shared_server: Server) -> None:
    mixed = "Manager-" + unique("x").upper()
    body = shared_server.ok("POST", "/roles", {"role": mixed, "name": "Manager"})
    assert body["data"]["role"] == mixed.lower()
    assert shared_server.ok("GET", f"/roles/{mixed}")["data"]["role"] == mixed.lower()
    assert shared_server.ok("GET", f"/roles/{mixed.lower()}")["data"]["name"] == "Manager"
    error_of(shared_server.post("/roles", {"role": mixed.lower(), "name": "Again"}), 409, "ERR_ROLE_ALREADY_EXISTS")
    error_of(shared_server.post("/roles", {"role": "DEFAULT", "name": "Shadow"}), 409, "ERR_ROLE_ALREADY_EXISTS")
    uid = unique("User").upper()
    user = shared_server.ok("PUT", f"/users/{uid}", {"role": mixed})["data"]
    assert user == {"uid": uid.lower(), "role": mixed.lower(), "assigned": True}


# -- decisions ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def group(shared_server: Server) -> dict[str, str]:
    ids = {"guid": unique("grp"), "owner": unique("owner"), "admin": unique("admin"),
           "moderator": unique("mod"), "participant": unique("part"), "outsider": unique("out")}
    shared_server.ok("PUT", f"/groups/{ids['guid']}", {"owner": ids["owner"]})
    for scope in ("admin", "moderator", "participant"):
        body = shared_server.ok("PUT", f"/groups/{ids['guid']}/members/{ids[scope]}", {"scope": scope})
        assert body["data"] == {"guid": ids["guid"], "uid": ids[scope], "scope": scope}
        assert isinstance(body["revision"], int)
    return ids


def test_moderator_kicks_a_participant_but_not_an_admin(shared_server: Server, group: dict[str, str]) -> None:
    allowed = shared_server.authorize(group["moderator"], "kickMembers", guid=group["guid"],
                                      target=group["participant"])
    assert allowed["allowed"] is True, allowed
    assert allowed["scope"] == "moderator"
    refused = shared_server.authorize(group["moderator"], "kickMembers", guid=group["guid"], target=group["admin"])
    assert refused["allowed"] is False, refused
    assert refused["code"] == "ERR_GROUP_NO_CLEARANCE"
    assert refused["layer"] == "clearance"
    assert "kickMembers.allowedScopes" in refused["reason"] or "admin" in refused["reason"], refused


def test_non_member_is_not_joined(shared_server: Server, group: dict[str, str]) -> None:
    for action in ("sendMessage", "listMessages", "editGroup", "joinCall"):
        decision = shared_server.authorize(group["outsider"], action, guid=group["guid"])
        assert decision["allowed"] is False, decision
        assert decision["code"] == "ERR_GROUP_NOT_JOINED", decision
        assert decision["layer"] == "membership"
        assert group["outsider"] in decision["reason"]
    # without a guid the same user is only asked about its role
    assert shared_server.authorize(group["outsider"], "sendMessage")["allowed"] is True


def test_banned_member_is_refused(shared_server: Server) -> None:
    """Bans are set up through POST /groups/{guid}/bannedusers/{uid} (issue 3's API)."""
    guid, owner, uid = unique("grp"), unique("owner"), unique("member")
    shared_server.ok("PUT", f"/groups/{guid}", {"owner": owner})
    shared_server.ok("PUT", f"/groups/{guid}/members/{uid}", {"scope": "participant"})
    assert shared_server.authorize(uid, "sendMessage", guid=guid)["allowed"] is True
    banned = shared_server.ok("POST", f"/groups/{guid}/bannedusers/{uid}")
    assert isinstance(banned["revision"], int)
    decision = shared_server.authorize(uid, "sendMessage", guid=guid)
    assert decision["allowed"] is False, decision
    assert decision["code"] == "ERR_BANNED_GROUPMEMBER"
    assert decision["layer"] == "membership"
    # a banned user is not a member: re-adding is refused until unbanned
    readd = shared_server.put(f"/groups/{guid}/members/{uid}", {"scope": "participant"})
    assert readd.status_code >= 400 and readd.json()["error"]["code"] == "ERR_BANNED_GROUPMEMBER", readd.text
    shared_server.ok("DELETE", f"/groups/{guid}/bannedusers/{uid}")
    after = shared_server.authorize(uid, "sendMessage", guid=guid)
    assert (after["allowed"], after["code"]) == (False, "ERR_GROUP_NOT_JOINED"), after


def test_restricted_role_sends_text_only(shared_server: Server) -> None:
    uid = unique("restricted")
    shared_server.ok("PUT", f"/users/{uid}", {"role": "restricted"})
    image = shared_server.authorize(uid, "sendMessage", context={"messageType": "image"})
    assert image["allowed"] is False, image
    assert image["code"] == "ERR_PERMISSION_DENIED"
    assert image["layer"] == "role"
    assert image["role"] == "restricted"
    assert "sendMessage.allowedMessageTypes" in image["reason"], image
    text = shared_server.authorize(uid, "sendMessage", context={"messageType": "text"})
    assert text["allowed"] is True, text
    # a constraint whose fact is missing fails closed, and says which fact to send
    missing = shared_server.authorize(uid, "sendMessage")
    assert missing["allowed"] is False, missing
    assert "context.messageType" in missing["reason"], missing
    # the restricted feature u.joinGroup gates joinGroup
    join = shared_server.authorize(uid, "joinGroup")
    assert join["allowed"] is False and "joinGroup" in join["reason"], join


def test_support_may_not_create_groups(shared_server: Server) -> None:
    uid = unique("agent")
    shared_server.ok("PUT", f"/users/{uid}", {"role": "support"})
    decision = shared_server.authorize(uid, "createGroup")
    assert decision["allowed"] is False, decision
    assert decision["code"] == "ERR_PERMISSION_DENIED"
    assert decision["layer"] == "role"
    assert decision["role"] == "support"
    assert "createGroup" in decision["reason"] and "roles.yaml" in decision["reason"], decision
    assert shared_server.authorize(uid, "sendMessage")["allowed"] is True


def test_unknown_action_is_a_bad_request(shared_server: Server) -> None:
    response = shared_server.post("/authorize", {"uid": unique("u"), "action": "flyToTheMoon"})
    error = bad_request(response, "action")
    assert "flyToTheMoon" in json.dumps(error)


@pytest.mark.parametrize(("body", "field"), [
    ({"action": "sendMessage"}, "uid"),
    ({"uid": "has space", "action": "sendMessage"}, "uid"),
    ({"uid": "u"}, "action"),
    ({"uid": "u", "action": 5}, "action"),
    ({"uid": "u", "action": "sendMessage", "context": "text"}, "context"),
    ({"uid": "u", "action": "sendMessage", "context": {"messageType": ["text"]}}, "context.messageType"),
    ({"uid": "u", "action": "sendMessage", "atLeastRevision": -1}, "atLeastRevision"),
    ({"uid": "u", "action": "sendMessage", "colour": "red"}, "colour"),
    ({"uid": "u", "action": "sendMessage", "guid": "bad guid"}, "guid"),
    ({"uid": "u", "action": "editGroup"}, "guid"),
    ({"uid": "u", "action": "kickMembers", "guid": "g"}, "target"),
])
def test_authorize_bad_bodies(shared_server: Server, body: dict[str, Any], field: str) -> None:
    bad_request(shared_server.post("/authorize", body), field)


def test_batch_answers_in_order_with_per_item_errors(shared_server: Server) -> None:
    agent = unique("agent")
    shared_server.ok("PUT", f"/users/{agent}", {"role": "support"})
    checks = [
        {"uid": agent, "action": "sendMessage"},
        {"uid": agent, "action": "noSuchAction"},
        {"uid": agent, "action": "createGroup"},
        {"action": "sendMessage"},
        {"uid": unique("plain"), "action": "createGroup"},
        "not an object",
    ]
    response = shared_server.post("/authorize/batch", {"checks": checks})
    assert response.status_code == 200, response.text
    results = response.json()["data"]["results"]
    assert len(results) == len(checks)
    assert results[0]["allowed"] is True and results[0]["role"] == "support"
    assert results[1]["error"]["code"] == "ERR_BAD_REQUEST" and "action" in results[1]["error"]["details"]
    assert results[2]["allowed"] is False and results[2]["code"] == "ERR_PERMISSION_DENIED"
    assert results[3]["error"]["code"] == "ERR_BAD_REQUEST" and "uid" in results[3]["error"]["details"]
    assert results[4]["allowed"] is True and results[4]["role"] == "default"
    assert results[5]["error"]["code"] == "ERR_BAD_REQUEST"
    ids = [r["decisionId"] for r in results if "decisionId" in r]
    assert len(ids) == 3 and len(set(ids)) == 3

    bad_request(shared_server.post("/authorize/batch", {"checks": []}), "checks")
    bad_request(shared_server.post("/authorize/batch", {"checks": {"uid": "u"}}), "checks")
    bad_request(shared_server.post("/authorize/batch", {"checks": [], "more": 1}), "more")


# -- keys ---------------------------------------------------------------------------------------
def test_missing_and_wrong_apikey(shared_server: Server) -> None:
    for method, path, body in (("GET", "/roles", None), ("POST", "/roles", {"role": unique("r"), "name": "n"}),
                               ("POST", "/authorize", {"uid": "u", "action": "sendMessage"}),
                               ("GET", "/users/u", None)):
        error_of(shared_server.request(method, path, json=body, apikey=None), 401, "AUTH_ERR_EMPTY_APIKEY")
        error_of(shared_server.request(method, path, json=body, apikey=""), 401, "AUTH_ERR_EMPTY_APIKEY")
        error_of(shared_server.request(method, path, json=body, apikey="wrong-key"), 401,
                 "AUTH_ERR_APIKEY_NOT_FOUND")
    # health needs no key
    assert shared_server.get("/health/live", apikey=None).status_code == 200
    assert shared_server.get("/health/ready", apikey=None).status_code == 200


def test_authorize_only_key(start_server: Any) -> None:
    auth_key = "authorize-only-key-abcdef"
    srv: Server = start_server(extra_env={"CHATAUTHZ_AUTHORIZE_KEY": auth_key})
    before = srv.revision()
    error_of(srv.get("/roles", apikey=auth_key), 403, "AUTH_ERR_NO_ACCESS")
    error_of(srv.post("/roles", {"role": "sneaky", "name": "Sneaky"}, apikey=auth_key), 403, "AUTH_ERR_NO_ACCESS")
    error_of(srv.put("/users/u1", {"role": "support"}, apikey=auth_key), 403, "AUTH_ERR_NO_ACCESS")
    error_of(srv.put("/groups/g1", {"owner": "u1"}, apikey=auth_key), 403, "AUTH_ERR_NO_ACCESS")
    assert srv.revision() == before
    error_of(srv.get("/roles/sneaky"), 404, "ERR_ROLE_NOT_FOUND")

    decision = srv.post("/authorize", {"uid": "u1", "action": "sendMessage"}, apikey=auth_key)
    assert decision.status_code == 200, decision.text
    assert decision.json()["data"]["allowed"] is True
    batch = srv.post("/authorize/batch", {"checks": [{"uid": "u1", "action": "createGroup"}]}, apikey=auth_key)
    assert batch.status_code == 200, batch.text
    # the full-access key still works for everything
    assert srv.get("/roles").status_code == 200


def test_generated_key_kept_in_the_data_folder(start_server: Any) -> None:
    srv: Server = start_server(api_key=None)
    key_file = srv.data_dir / "apikeys.json"
    assert key_file.exists()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    keys = json.loads(key_file.read_text())
    full = [k for k in keys if k["scope"] == "fullAccess"]
    assert len(full) == 1 and len(full[0]["key"]) >= 32
    key = full[0]["key"]
    assert str(key_file) in srv.stdout()  # the log says where the key is
    assert key not in srv.stdout() + srv.stderr()  # ... and never prints it

    error_of(srv.get("/roles"), 401, "AUTH_ERR_EMPTY_APIKEY")
    error_of(srv.get("/roles", apikey="guess"), 401, "AUTH_ERR_APIKEY_NOT_FOUND")
    assert srv.get("/roles", apikey=key).status_code == 200
    created = srv.post("/roles", {"role": "keyed", "name": "Keyed"}, apikey=key)
    assert created.status_code == 200, created.text

    srv.restart()  # the same key again, not a new one
    assert json.loads(key_file.read_text()) == keys
    assert srv.get("/roles/keyed", apikey=key).status_code == 200


# -- management errors --------------------------------------------------------------------------
def test_unknown_role_is_404(shared_server: Server) -> None:
    role = unique("ghost")
    error_of(shared_server.get(f"/roles/{role}"), 404, "ERR_ROLE_NOT_FOUND")
    error_of(shared_server.put(f"/users/{unique('u')}", {"role": role}), 404, "ERR_ROLE_NOT_FOUND")
    error_of(shared_server.put(f"/roles/{role}", {"name": "x"}), 404, "ERR_ROLE_NOT_FOUND")
    error_of(shared_server.delete(f"/roles/{role}"), 404, "ERR_ROLE_NOT_FOUND")
    error_of(shared_server.put(f"/roles/{role}/permissions", {"permissions": {"sendMessage": "deny"}}), 404,
             "ERR_ROLE_NOT_FOUND")


def test_duplicate_role_is_409(shared_server: Server) -> None:
    role = new_role(shared_server, name="First")
    before = shared_server.revision()
    error_of(shared_server.post("/roles", {"role": role, "name": "Second"}), 409, "ERR_ROLE_ALREADY_EXISTS")
    error_of(shared_server.post("/roles", {"role": "support", "name": "Shadow"}), 409, "ERR_ROLE_ALREADY_EXISTS")
    assert shared_server.ok("GET", f"/roles/{role}")["data"]["name"] == "First"
    assert shared_server.revision() == before


BAD_ROLE_BODIES = [
    ("missing name", lambda r: {"role": r}, "name"),
    ("empty name", lambda r: {"role": r, "name": "  "}, "name"),
    ("name over 100", lambda r: {"role": r, "name": "n" * 101}, "name"),
    ("description over 255", lambda r: {"role": r, "name": "n", "description": "d" * 256}, "description"),
    ("role with spaces", lambda r: {"role": r + " x", "name": "n"}, "role"),
    ("role over 100", lambda r: {"role": "r" * 101, "name": "n"}, "role"),
    ("missing role", lambda r: {"name": "n"}, "role"),
    ("unknown field", lambda r: {"role": r, "name": "n", "colour": "red"}, "colour"),
    ("metadata a string", lambda r: {"role": r, "name": "n", "metadata": "x"}, "metadata"),
    ("metadata a list", lambda r: {"role": r, "name": "n", "metadata": [1]}, "metadata"),
    ("metadata too big", lambda r: {"role": r, "name": "n", "metadata": {"k": "v" * 5000}}, "metadata"),
    ("body a list", lambda r: [{"role": r, "name": "n"}], "body"),
]


@pytest.mark.parametrize(("case", "make", "field"), BAD_ROLE_BODIES, ids=[c for c, _, _ in BAD_ROLE_BODIES])
def test_bad_role_bodies_name_the_field(shared_server: Server, case: str, make: Any, field: str) -> None:
    role = unique("bad")
    before = shared_server.revision()
    bad_request(shared_server.post("/roles", make(role)), field)
    error_of(shared_server.get(f"/roles/{role}"), 404, "ERR_ROLE_NOT_FOUND")
    assert shared_server.revision() == before


def test_non_json_and_wrong_content_type(shared_server: Server) -> None:
    role = unique("raw")
    payload = json.dumps({"role": role, "name": "n"})
    not_json = shared_server.request("POST", "/roles", data="{not json",
                                     headers={"Content-Type": "application/json"})
    bad_request(not_json, "body")
    wrong_type = shared_server.request("POST", "/roles", data=payload, headers={"Content-Type": "text/plain"})
    bad_request(wrong_type, "body")
    no_body = shared_server.request("POST", "/roles")
    bad_request(no_body, "body")
    bad_request(shared_server.request("POST", "/authorize", data="uid=u&action=sendMessage",
                                      headers={"Content-Type": "application/x-www-form-urlencoded"}), "body")
    error_of(shared_server.get(f"/roles/{role}"), 404, "ERR_ROLE_NOT_FOUND")


def test_bad_update_and_permission_bodies(shared_server: Server) -> None:
    role = new_role(shared_server, name="Before")
    bad_request(shared_server.put(f"/roles/{role}", {"name": "n" * 101}), "name")
    bad_request(shared_server.put(f"/roles/{role}", {"description": "d" * 256}), "description")
    bad_request(shared_server.put(f"/roles/{role}", {"metadata": "x"}), "metadata")
    bad_request(shared_server.put(f"/roles/{role}", {"role": "rename"}), "role")
    bad_request(shared_server.put(f"/roles/{role}/permissions", {"permissions": {"noSuchKey": "deny"}}),
                "permissions.noSuchKey")
    bad_request(shared_server.put(f"/roles/{role}/permissions", {"permissions": {"sendMessage": "maybe"}}),
                "permissions.sendMessage")
    bad_request(shared_server.put(f"/roles/{role}/permissions", {"permissions": "deny"}), "permissions")
    bad_request(shared_server.put(f"/users/{unique('u')}", {"role": "support", "extra": 1}), "extra")
    bad_request(shared_server.put(f"/users/{unique('u')}", {}), "role")
    bad_request(shared_server.put(f"/groups/{unique('g')}/members/{unique('u')}", {"scope": "owner"}), "scope")
    bad_request(shared_server.put(f"/groups/{unique('g')}", {"owner": "bad owner"}), "owner")
    assert shared_server.ok("GET", f"/roles/{role}")["data"]["name"] == "Before"


def test_unknown_route_and_wrong_method(shared_server: Server) -> None:
    for apikey in (shared_server.api_key, None):
        for path in ("/nope", "/roles/a/b/c", "/authorize/nope"):
            error_of(shared_server.get(path, apikey=apikey), 404, "ERR_API_NOT_FOUND")
    wrong = shared_server.request("DELETE", "/roles")
    error_of(wrong, 405, "ERR_METHOD_NOT_ALLOWED")
    assert "POST" in wrong.headers.get("Allow", "") and "GET" in wrong.headers.get("Allow", "")
    error_of(shared_server.get("/authorize"), 405, "ERR_METHOD_NOT_ALLOWED")
    error_of(shared_server.request("PATCH", "/roles/support"), 405, "ERR_METHOD_NOT_ALLOWED")
    error_of(shared_server.post("/users/u", {"role": "support"}), 405, "ERR_METHOD_NOT_ALLOWED")


# -- limits, atomicity, paging --------------------------------------------------------------------
def test_the_26th_role_is_refused(server: Server) -> None:
    assert server.ok("GET", "/roles")["meta"]["pagination"]["total"] == len(FILE_ROLES)
    created = [new_role(server, role=f"quota-{i:02d}") for i in range(25 - len(FILE_ROLES))]
    assert server.ok("GET", "/roles?perPage=100")["meta"]["pagination"]["total"] == 25
    before = server.revision()
    error_of(server.post("/roles", {"role": "quota-26", "name": "One too many"}), 403, "ERR_PLAN_QUOTA_RESTRICTION")
    error_of(server.get("/roles/quota-26"), 404, "ERR_ROLE_NOT_FOUND")
    assert server.revision() == before
    # a duplicate is still a duplicate at the cap
    error_of(server.post("/roles", {"role": created[0], "name": "dup"}), 409, "ERR_ROLE_ALREADY_EXISTS")
    # deleting one frees a slot
    server.ok("DELETE", f"/roles/{created[0]}")
    new_role(server, role="quota-26")
    error_of(server.post("/roles", {"role": "quota-27", "name": "n"}), 403, "ERR_PLAN_QUOTA_RESTRICTION")


def test_a_refused_write_changes_nothing(shared_server: Server) -> None:
    server = shared_server  # tests run one at a time: nobody else writes in between
    role = new_role(server, name="Stable", description="kept")
    server.ok("PUT", f"/roles/{role}/permissions", {"permissions": {"sendMessage": "deny"}})
    uid = unique("user")
    last = server.ok("PUT", f"/users/{uid}", {"role": role})["revision"]
    assert server.revision() == last

    refused = [
        server.post("/roles", {"role": role, "name": "dup"}),
        server.post("/roles", {"role": unique("r"), "name": "n", "description": "d" * 256}),
        server.put(f"/roles/{role}", {"name": "Renamed", "metadata": "not an object"}),
        server.put(f"/roles/{role}/permissions", {"permissions": {"createGroup": "deny", "noSuchKey": "deny"}}),
        server.put(f"/roles/{role}/permissions", {"permissions": {"createGroup": "deny", "sendMessage": "perhaps"}}),
        server.put(f"/users/{uid}", {"role": unique("ghost")}),
        server.delete("/roles/default"),
        server.delete("/roles/support"),
        server.put(f"/roles/{role}", {"name": "Renamed"}, apikey="wrong"),
    ]
    assert all(r.status_code >= 400 for r in refused), [(r.status_code, r.text) for r in refused]
    assert server.revision() == last
    shown = server.ok("GET", f"/roles/{role}")["data"]
    assert shown["name"] == "Stable" and shown["description"] == "kept" and "metadata" not in shown
    perms = {p["id"]: p for p in server.ok("GET", f"/roles/{role}/permissions?perPage=1000")["data"]}
    assert perms["sendMessage"]["value"] == "deny" and perms["sendMessage"]["source"] == "runtime"
    assert perms["createGroup"]["value"] == "allow" and perms["createGroup"]["source"] == "catalogue"
    assert server.ok("GET", f"/users/{uid}")["data"]["role"] == role
    assert server.authorize(uid, "createGroup")["allowed"] is True

    # a write that changes nothing keeps the revision; the next real write is exactly one more
    same = server.ok("PUT", f"/users/{uid}", {"role": role})
    assert same["revision"] == last
    moved = server.ok("PUT", f"/users/{uid}", {"role": "support"})
    assert moved["revision"] == last + 1
    assert server.revision() == last + 1


def test_paging_roles(server: Server) -> None:
    everything = server.ok("GET", "/roles")
    assert [r["role"] for r in everything["data"]] == FILE_ROLES
    assert everything["meta"]["pagination"] == {"total": 3, "count": 3, "per_page": 100, "current_page": 1,
                                                "total_pages": 1}
    first = server.ok("GET", "/roles?perPage=2&page=1")
    assert [r["role"] for r in first["data"]] == FILE_ROLES[:2]
    assert first["meta"]["pagination"] == {"total": 3, "count": 2, "per_page": 2, "current_page": 1,
                                           "total_pages": 2}
    second = server.ok("GET", "/roles?perPage=2&page=2")
    assert [r["role"] for r in second["data"]] == FILE_ROLES[2:]
    assert second["meta"]["pagination"]["count"] == 1
    beyond = server.ok("GET", "/roles?perPage=2&page=7")
    assert beyond["data"] == []
    assert beyond["meta"]["pagination"]["total"] == 3 and beyond["meta"]["pagination"]["count"] == 0
    for query, field in (("perPage=0", "perPage"), ("perPage=abc", "perPage"), ("perPage=-1", "perPage"),
                         ("perPage=1001", "perPage"), ("page=0", "page"), ("page=x", "page")):
        bad_request(server.get(f"/roles?{query}"), field)
    permissions = server.ok("GET", "/roles/support/permissions?perPage=5&page=1")
    assert permissions["meta"]["pagination"]["count"] == 5
    assert permissions["meta"]["pagination"]["total"] > 5
