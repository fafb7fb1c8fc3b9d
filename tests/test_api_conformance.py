"""Conformance of every management endpoint (issue 3) against the real server.

For each endpoint: the success shape, every documented error code with its status, validation
of each field (limits, unknown keys, wrong types, values outside the allowed set) and paging
edges. Every write answers with "revision"; a refused write leaves the revision unchanged.

One server for the module (with an authorize-only key too); every test uses its own ids, and
runtime roles are deleted at teardown so the 25-role cap is never reached.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
from conftest import Server, unique

AUTHORIZE_KEY = "conformance-authorize-only-key-42"
ROLE_KEY_COUNT = 58    # roleKeys in policies/catalogue.yaml
SCOPE_KEY_COUNT = 37   # scopeKeys in policies/catalogue.yaml
SCOPES = ("admin", "moderator", "participant")
ROW_FIELDS = {"id", "type", "title", "dataType", "availableValues", "defaultValue", "value", "source"}
PAGINATION_FIELDS = {"total", "count", "per_page", "current_page", "total_pages"}


# -- fixtures and helpers -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("conformance")
    server = Server(base / "data", workers=1, log_dir=base / "logs",
                    extra_env={"CHATAUTHZ_AUTHORIZE_KEY": AUTHORIZE_KEY})
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def new_role(srv: Server) -> Iterator[Callable[..., str]]:
    """Factory: create a runtime role (fields as given); deleted again at teardown."""
    created: list[str] = []

    def make(**fields: Any) -> str:
        role = fields.pop("role", None) or unique("role")
        body = write_ok(srv, "POST", "/roles", {"role": role, "name": fields.pop("name", "A role"), **fields})
        created.append(body["data"]["role"])
        return body["data"]["role"]  # type: ignore[no-any-return]

    yield make
    for role in created:
        srv.delete(f"/roles/{role}")


def new_group(srv: Server, **members: list[str]) -> tuple[str, str]:
    """A group with a fresh owner, plus members given as admins=[...], moderators=[...], ..."""
    guid, owner = unique("grp"), unique("owner")
    write_ok(srv, "PUT", f"/groups/{guid}", {"owner": owner})
    if members:
        body = write_ok(srv, "POST", f"/groups/{guid}/members", members)
        assert all(r["success"] for lst in body["data"].values() for r in lst.values()), body
    return guid, owner


def error_of(response: requests.Response, status: int, code: str) -> dict[str, Any]:
    """An error envelope with that status and code; returns the error object."""
    assert response.status_code == status, (f"{response.request.method} {response.url} -> "
                                            f"{response.status_code} {response.text}")
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"], error
    return error  # type: ignore[no-any-return]


def refused(srv: Server, method: str, path: str, body: Any = None, *, status: int, code: str,
            field: str | None = None, **kwargs: Any) -> dict[str, Any]:
    """The request is refused with (status, code[, details naming field]) and the revision stays."""
    before = srv.revision()
    error = error_of(srv.request(method, path, json=body, **kwargs), status, code)
    if field is not None:
        assert field in error.get("details", {}), error
        assert isinstance(error["details"][field], list) and error["details"][field], error
    assert srv.revision() == before, f"refused {method} {path} {body!r} moved the revision"
    return error


def bad(srv: Server, method: str, path: str, body: Any = None, *, field: str, **kwargs: Any) -> dict[str, Any]:
    return refused(srv, method, path, body, status=400, code="ERR_BAD_REQUEST", field=field, **kwargs)


def write_ok(srv: Server, method: str, path: str, body: Any = None, *, changes: bool | None = True,
             **kwargs: Any) -> dict[str, Any]:
    """A write that succeeds: 200, {"data", "revision", "token"}; the revision is now current, and it moved by
    exactly one (changes=True), stayed (changes=False) or either (changes=None)."""
    before = srv.revision()
    response = srv.request(method, path, json=body, **kwargs)
    assert response.status_code == 200, f"{method} {path} {body!r} -> {response.status_code} {response.text}"
    answer = response.json()
    assert set(answer) == {"data", "revision", "token"}, answer
    assert answer["token"].endswith(f":{answer['revision']}"), answer
    revision = answer["revision"]
    assert isinstance(revision, int) and not isinstance(revision, bool), answer
    if changes is True:
        assert revision == before + 1, (before, answer)
    elif changes is False:
        assert revision == before, (before, answer)
    assert srv.revision() == revision
    return answer  # type: ignore[no-any-return]


def listed(srv: Server, path: str) -> dict[str, Any]:
    """A paged list: {"data": [...], "meta": {"pagination": {...}}} with consistent numbers."""
    response = srv.get(path)
    assert response.status_code == 200, f"GET {path} -> {response.status_code} {response.text}"
    body = response.json()
    assert set(body) == {"data", "meta"}, body
    assert isinstance(body["data"], list)
    pagination = body["meta"]["pagination"]
    assert set(pagination) == PAGINATION_FIELDS, pagination
    assert pagination["count"] == len(body["data"])
    assert pagination["total_pages"] == max(1, -(-pagination["total"] // pagination["per_page"]))
    return body  # type: ignore[no-any-return]


def all_pages(srv: Server, path: str, per_page: int = 1000) -> list[Any]:
    joiner = "&" if "?" in path else "?"
    items: list[Any] = []
    for page in range(1, 1000):
        body = listed(srv, f"{path}{joiner}perPage={per_page}&page={page}")
        items += body["data"]
        if page >= body["meta"]["pagination"]["total_pages"]:
            return items
    raise AssertionError("too many pages")


def members_of(srv: Server, guid: str) -> dict[str, str]:
    return {m["uid"]: m["scope"] for m in all_pages(srv, f"/groups/{guid}/members")}


def banned_in(srv: Server, guid: str) -> list[str]:
    return [b["uid"] for b in all_pages(srv, f"/groups/{guid}/bannedusers")]


def rows_by_id(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in rows}


# -- keys: every management endpoint needs a full-access key ----------------------------------------
ENDPOINTS = [
    ("POST", "/roles", {"role": "k-role", "name": "n"}),
    ("GET", "/roles", None),
    ("GET", "/roles/support", None),
    ("PUT", "/roles/support", {"name": "n"}),
    ("DELETE", "/roles/k-role", None),
    ("GET", "/roles/support/permissions", None),
    ("PUT", "/roles/support/permissions", {"permissions": {"sendMessage": "deny"}}),
    ("DELETE", "/roles/support/permissions/sendMessage", None),
    ("POST", "/roles/support/restrictedfeatures", {"featuresToRestrict": ["u.listUsers"]}),
    ("GET", "/roles/support/restrictedfeatures", None),
    ("DELETE", "/roles/support/restrictedfeatures", {"allowAll": True}),
    ("PUT", "/users/k-user", {"role": "support"}),
    ("GET", "/users/k-user", None),
    ("DELETE", "/users/k-user", None),
    ("PUT", "/groups/k-grp", {"owner": "k-owner"}),
    ("GET", "/groups/k-grp", None),
    ("DELETE", "/groups/k-grp", None),
    ("POST", "/groups/k-grp/members", {"participants": ["k-user"]}),
    ("GET", "/groups/k-grp/members", None),
    ("PUT", "/groups/k-grp/members/k-user", {"scope": "moderator"}),
    ("DELETE", "/groups/k-grp/members/k-user", None),
    ("POST", "/groups/k-grp/bannedusers/k-user", None),
    ("DELETE", "/groups/k-grp/bannedusers/k-user", None),
    ("GET", "/groups/k-grp/bannedusers", None),
    ("GET", "/groups/k-grp/scopes/admin/permissions", None),
    ("PUT", "/groups/k-grp/scopes/admin/permissions", {"permissions": {"sendMessage": "deny"}}),
    ("DELETE", "/groups/k-grp/scopes/admin/permissions/sendMessage", None),
    ("GET", "/changes?since=0", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS, ids=[f"{m} {p}" for m, p, _ in ENDPOINTS])
def test_management_needs_a_full_access_key(srv: Server, method: str, path: str, body: Any) -> None:
    refused(srv, method, path, body, status=401, code="AUTH_ERR_EMPTY_APIKEY", apikey=None)
    refused(srv, method, path, body, status=401, code="AUTH_ERR_APIKEY_NOT_FOUND", apikey="not-a-key")
    refused(srv, method, path, body, status=403, code="AUTH_ERR_NO_ACCESS", apikey=AUTHORIZE_KEY)
    error_of(srv.get("/roles/k-role"), 404, "ERR_ROLE_NOT_FOUND")
    error_of(srv.get("/groups/k-grp"), 404, "ERR_GUID_NOT_FOUND")
    assert srv.ok("GET", "/users/k-user")["data"]["assigned"] is False


@pytest.mark.parametrize(("method", "path"), [
    ("PATCH", "/roles/support"), ("POST", "/roles/support/permissions"), ("GET", "/groups/g/members/u"),
    ("PUT", "/groups/g/bannedusers/u"), ("POST", "/changes"), ("PUT", "/roles/support/restrictedfeatures"),
    ("POST", "/groups/g/scopes/admin/permissions"),
])
def test_wrong_method_is_405(srv: Server, method: str, path: str) -> None:
    error_of(srv.request(method, path, json={}), 405, "ERR_METHOD_NOT_ALLOWED")


# -- /roles -----------------------------------------------------------------------------------------
def test_create_role_success_shape(srv: Server, new_role: Callable[..., str]) -> None:
    role_id = unique("Mixed").upper()
    before = srv.revision()
    role = new_role(role=role_id, name="Manager 🚀", description="d" * 255, metadata={"email": "m@x.io"},
                    settings={"listUsers": "all", "sendMessagesTo": "friendsOnly"})
    assert role == role_id.lower()
    shown = srv.ok("GET", f"/roles/{role}")["data"]
    assert shown["role"] == role and shown["name"] == "Manager 🚀" and shown["description"] == "d" * 255
    assert shown["metadata"] == {"email": "m@x.io"}
    assert shown["settings"] == {"listUsers": "all", "sendMessagesTo": "friendsOnly"}
    assert isinstance(shown["createdAt"], int) and shown["createdAt"] > 1_600_000_000
    assert "updatedAt" not in shown
    assert shown["source"] == "runtime"
    assert srv.revision() == before + 1
    # limits are inclusive: a 100-character id and name are fine
    long_id = ("r" * 88 + unique("x"))[-100:]
    assert new_role(role=long_id, name="n" * 100) == long_id
    listed_roles = {r["role"]: r for r in all_pages(srv, "/roles")}
    assert listed_roles[role]["name"] == "Manager 🚀" and long_id in listed_roles


BAD_CREATES: list[tuple[str, Callable[[str], Any], str]] = [
    ("missing role", lambda r: {"name": "n"}, "role"),
    ("role not a string", lambda r: {"role": 5, "name": "n"}, "role"),
    ("role empty", lambda r: {"role": "", "name": "n"}, "role"),
    ("role with a space", lambda r: {"role": r + " x", "name": "n"}, "role"),
    ("role with a dot", lambda r: {"role": r + ".x", "name": "n"}, "role"),
    ("role over 100", lambda r: {"role": "r" * 101, "name": "n"}, "role"),
    ("missing name", lambda r: {"role": r}, "name"),
    ("name blank", lambda r: {"role": r, "name": "   "}, "name"),
    ("name not a string", lambda r: {"role": r, "name": 7}, "name"),
    ("name over 100", lambda r: {"role": r, "name": "n" * 101}, "name"),
    ("description not a string", lambda r: {"role": r, "name": "n", "description": 5}, "description"),
    ("description over 255", lambda r: {"role": r, "name": "n", "description": "d" * 256}, "description"),
    ("metadata a string", lambda r: {"role": r, "name": "n", "metadata": "x"}, "metadata"),
    ("metadata a list", lambda r: {"role": r, "name": "n", "metadata": [1]}, "metadata"),
    ("metadata too big", lambda r: {"role": r, "name": "n", "metadata": {"k": "v" * 5000}}, "metadata"),
    ("settings a string", lambda r: {"role": r, "name": "n", "settings": "all"}, "settings"),
    ("settings unknown key", lambda r: {"role": r, "name": "n", "settings": {"colour": "all"}}, "settings"),
    ("settings bad value", lambda r: {"role": r, "name": "n", "settings": {"listUsers": "some"}},
     "settings.listUsers"),
    ("unknown field", lambda r: {"role": r, "name": "n", "colour": "red"}, "colour"),
    ("createdAt is not settable", lambda r: {"role": r, "name": "n", "createdAt": 1}, "createdAt"),
    ("body a list", lambda r: [{"role": r, "name": "n"}], "body"),
    ("body a string", lambda r: "role", "body"),
]


@pytest.mark.parametrize(("case", "make", "field"), BAD_CREATES, ids=[c for c, _, _ in BAD_CREATES])
def test_create_role_validation(srv: Server, case: str, make: Callable[[str], Any], field: str) -> None:
    role = unique("bad")
    bad(srv, "POST", "/roles", make(role), field=field)
    error_of(srv.get(f"/roles/{role}"), 404, "ERR_ROLE_NOT_FOUND")


def test_create_role_conflicts(srv: Server, new_role: Callable[..., str]) -> None:
    role = new_role(name="First")
    for duplicate in (role, role.upper(), "default", "support"):
        refused(srv, "POST", "/roles", {"role": duplicate, "name": "Again"}, status=409, code="ERR_ROLE_ALREADY_EXISTS")
    assert srv.ok("GET", f"/roles/{role}")["data"]["name"] == "First"


def test_the_26th_role_is_refused(srv: Server, new_role: Callable[..., str]) -> None:
    present = listed(srv, "/roles?perPage=1000")["meta"]["pagination"]["total"]
    for _ in range(25 - present):
        new_role()
    assert listed(srv, "/roles?perPage=1000")["meta"]["pagination"]["total"] == 25
    role = unique("one-too-many")
    refused(srv, "POST", "/roles", {"role": role, "name": "n"}, status=403, code="ERR_PLAN_QUOTA_RESTRICTION")
    error_of(srv.get(f"/roles/{role}"), 404, "ERR_ROLE_NOT_FOUND")


def test_a_body_over_the_limit_is_413(srv: Server, new_role: Callable[..., str]) -> None:
    role = new_role(name="Small")
    huge = {"name": "n", "description": "d" * (1024 * 1024 + 10)}
    refused(srv, "PUT", f"/roles/{role}", huge, status=413, code="ERR_PAYLOAD_TOO_LARGE")
    refused(srv, "POST", f"/groups/{unique('g')}/members", {"participants": ["u" * 50] * 25000}, status=413,
            code="ERR_PAYLOAD_TOO_LARGE")
    assert srv.ok("GET", f"/roles/{role}")["data"]["name"] == "Small"


def test_get_role(srv: Server) -> None:
    support = srv.ok("GET", "/roles/SUPPORT")["data"]
    assert support["role"] == "support" and support["name"] == "Support agent"
    assert support["source"].startswith("policy file")
    error_of(srv.get(f"/roles/{unique('ghost')}"), 404, "ERR_ROLE_NOT_FOUND")
    bad(srv, "GET", "/roles/" + quote("has space"), field="role")
    bad(srv, "GET", "/roles/" + "r" * 101, field="role")


def test_update_role_success_and_unset(srv: Server, new_role: Callable[..., str]) -> None:
    role = new_role(name="Before", description="desc", metadata={"a": 1})
    created = srv.ok("GET", f"/roles/{role}")["data"]["createdAt"]
    body = write_ok(srv, "PUT", f"/roles/{role}", {"name": "After", "settings": {"listUsers": "friendsOnly"}})
    data = body["data"]
    assert data["role"] == role and data["name"] == "After" and data["description"] == "desc"
    assert data["metadata"] == {"a": 1} and data["settings"] == {"listUsers": "friendsOnly"}
    assert data["createdAt"] == created and isinstance(data["updatedAt"], int) and data["updatedAt"] >= created
    unset = write_ok(srv, "PUT", f"/roles/{role}", {"unset": ["description", "metadata"]})["data"]
    assert "description" not in unset and "metadata" not in unset
    assert unset["name"] == "After" and unset["settings"] == {"listUsers": "friendsOnly"}
    assert srv.ok("GET", f"/roles/{role}")["data"] == unset


BAD_UPDATES: list[tuple[str, Any, str]] = [
    ("name over 100", {"name": "n" * 101}, "name"),
    ("name empty", {"name": ""}, "name"),
    ("name not a string", {"name": 5}, "name"),
    ("description over 255", {"description": "d" * 256}, "description"),
    ("metadata a string", {"metadata": "x"}, "metadata"),
    ("settings bad value", {"settings": {"sendMessagesTo": "everyone"}}, "settings.sendMessagesTo"),
    ("settings unknown key", {"settings": {"x": "all"}}, "settings"),
    ("unset not a list", {"unset": "description"}, "unset"),
    ("unset name", {"unset": ["name"]}, "unset"),
    ("unset and set", {"unset": ["description"], "description": "x"}, "unset"),
    ("role cannot change", {"role": "other"}, "role"),
    ("unknown field", {"colour": "red"}, "colour"),
    ("body a list", [], "body"),
]


@pytest.mark.parametrize(("case", "body", "field"), BAD_UPDATES, ids=[c for c, _, _ in BAD_UPDATES])
def test_update_role_validation(srv: Server, new_role: Callable[..., str], case: str, body: Any,
                                field: str) -> None:
    role = new_role(name="Kept", description="kept", metadata={"k": 1}, settings={"listUsers": "all"})
    shown = srv.ok("GET", f"/roles/{role}")["data"]
    bad(srv, "PUT", f"/roles/{role}", body, field=field)
    assert srv.ok("GET", f"/roles/{role}")["data"] == shown


def test_update_unknown_role_is_404(srv: Server) -> None:
    refused(srv, "PUT", f"/roles/{unique('ghost')}", {"name": "x"}, status=404, code="ERR_ROLE_NOT_FOUND")


def test_delete_role(srv: Server, new_role: Callable[..., str]) -> None:
    role = new_role()
    uids = [unique("holder") for _ in range(3)]
    for uid in uids:
        write_ok(srv, "PUT", f"/users/{uid}", {"role": role})
    body = write_ok(srv, "DELETE", f"/roles/{role}")
    assert body["data"]["success"] is True
    assert isinstance(body["data"]["message"], str) and role in body["data"]["message"]
    assert body["data"]["usersMovedToDefault"] == 3
    for uid in uids:
        assert srv.ok("GET", f"/users/{uid}")["data"] == {"uid": uid, "role": "default", "assigned": False}
    error_of(srv.get(f"/roles/{role}"), 404, "ERR_ROLE_NOT_FOUND")
    refused(srv, "DELETE", f"/roles/{role}", status=404, code="ERR_ROLE_NOT_FOUND")
    refused(srv, "DELETE", "/roles/default", status=403, code="ERR_ROLE_DELETE_DENIED")
    refused(srv, "DELETE", "/roles/support", status=403, code="ERR_ROLE_DELETE_DENIED")
    refused(srv, "DELETE", "/roles/" + quote("bad role"), status=400, code="ERR_BAD_REQUEST", field="role")
    # a role nobody holds moves nobody
    empty = new_role()
    assert write_ok(srv, "DELETE", f"/roles/{empty}")["data"]["usersMovedToDefault"] == 0


def test_list_roles_paging(srv: Server, new_role: Callable[..., str]) -> None:
    mine = [new_role(role=f"zz-page-{i}-{unique('r')}") for i in range(3)]
    everything = all_pages(srv, "/roles")
    ids = [r["role"] for r in everything]
    assert ids == sorted(ids) and {"default", "support", "restricted", *mine} <= set(ids)
    total = len(ids)
    last_page = -(-total // 2)
    last = listed(srv, f"/roles?perPage=2&page={last_page}")
    assert last["meta"]["pagination"] == {"total": total, "count": total - 2 * (last_page - 1), "per_page": 2,
                                          "current_page": last_page, "total_pages": last_page}
    beyond = listed(srv, f"/roles?perPage=2&page={last_page + 1}")
    assert beyond["data"] == [] and beyond["meta"]["pagination"]["total"] == total
    assert listed(srv, "/roles?perPage=1000")["meta"]["pagination"]["count"] == total
    for query, field in (("perPage=1001", "perPage"), ("perPage=0", "perPage"), ("perPage=x", "perPage"),
                         ("page=0", "page"), ("page=-2", "page"), ("page=1.5", "page")):
        bad(srv, "GET", f"/roles?{query}", field=field)


# -- /roles/{role}/permissions ----------------------------------------------------------------------
def test_role_permissions_list_shape(srv: Server) -> None:
    rows = all_pages(srv, "/roles/support/permissions")
    assert len(rows) == ROLE_KEY_COUNT
    for row in rows:
        assert set(row) == ROW_FIELDS, row
        assert row["type"] == "role"
    by_id = rows_by_id(rows)
    assert by_id["createGroup"] == {
        "id": "createGroup", "type": "role", "title": "Create groups", "dataType": "allowDeny",
        "availableValues": ["allow", "deny"], "defaultValue": "allow", "value": "deny", "source": "roles.yaml"}
    assert by_id["sendMessage"]["value"] == "allow" and by_id["sendMessage"]["source"] == "catalogue"
    types = by_id["sendMessage.allowedMessageTypes"]
    assert types["dataType"] == "stringArray" and types["defaultValue"] is None and types["value"] is None
    assert set(types["availableValues"]) == {"text", "image", "audio", "video", "file"}
    assert rows_by_id(all_pages(srv, "/roles/restricted/permissions"))["sendMessage.allowedMessageTypes"]["value"] == ["text"]
    first = listed(srv, "/roles/support/permissions?perPage=10&page=6")
    assert first["meta"]["pagination"]["count"] == ROLE_KEY_COUNT - 50
    assert listed(srv, "/roles/support/permissions?perPage=10&page=7")["data"] == []
    bad(srv, "GET", "/roles/support/permissions?perPage=1001", field="perPage")
    error_of(srv.get(f"/roles/{unique('ghost')}/permissions"), 404, "ERR_ROLE_NOT_FOUND")


def test_set_role_permissions_merges_and_answers_per_key(srv: Server, new_role: Callable[..., str]) -> None:
    role = new_role()
    first = write_ok(srv, "PUT", f"/roles/{role}/permissions",
                     {"permissions": {"sendMessage": "deny", "sendMessage.allowedMessageTypes": ["text", "image"]}})
    data = first["data"]
    assert set(data) == {"sendMessage", "sendMessage.allowedMessageTypes", "permissions"}
    for key in ("sendMessage", "sendMessage.allowedMessageTypes"):
        assert data[key]["success"] is True and key in data[key]["message"] and role in data[key]["message"]
    assert data["permissions"] == {"sendMessage": "deny", "sendMessage.allowedMessageTypes": ["text", "image"]}
    second = write_ok(srv, "PUT", f"/roles/{role}/permissions",
                      {"permissions": {"listUsers.mode": "friends", "blockUser.allowedRoles": [role, "support"],
                                       "sendMessage": "allow"}})
    assert second["data"]["permissions"] == {
        "sendMessage": "allow", "sendMessage.allowedMessageTypes": ["text", "image"],
        "listUsers.mode": "friends", "blockUser.allowedRoles": [role, "support"]}
    by_id = rows_by_id(all_pages(srv, f"/roles/{role}/permissions"))
    assert (by_id["listUsers.mode"]["value"], by_id["listUsers.mode"]["source"]) == ("friends", "runtime")
    assert (by_id["createGroup"]["value"], by_id["createGroup"]["source"]) == ("allow", "catalogue")
    # null means unrestricted and is kept as an explicit value
    third = write_ok(srv, "PUT", f"/roles/{role}/permissions", {"permissions": {"sendMessage.allowedMessageTypes": None}})
    assert third["data"]["permissions"]["sendMessage.allowedMessageTypes"] is None


BAD_ROLE_PERMISSIONS: list[tuple[str, Any, str]] = [
    ("unknown key", {"permissions": {"noSuchKey": "deny"}}, "permissions.noSuchKey"),
    ("scope-only key", {"permissions": {"addMembers": "allow"}}, "permissions.addMembers"),
    ("value outside allow/deny", {"permissions": {"sendMessage": "maybe"}}, "permissions.sendMessage"),
    ("boolean value", {"permissions": {"sendMessage": True}}, "permissions.sendMessage"),
    ("mode value", {"permissions": {"listUsers.mode": "allow"}}, "permissions.listUsers.mode"),
    ("array value outside the vocabulary", {"permissions": {"sendMessage.allowedMessageTypes": ["text", "gif"]}},
     "permissions.sendMessage.allowedMessageTypes"),
    ("array of numbers", {"permissions": {"sendMessage.allowedMessageTypes": [1]}},
     "permissions.sendMessage.allowedMessageTypes"),
    ("unknown role in a roles array", {"permissions": {"blockUser.allowedRoles": ["no-such-role-x"]}},
     "permissions.blockUser.allowedRoles"),
    ("one bad key fails all", {"permissions": {"createGroup": "deny", "sendMessage": "perhaps"}},
     "permissions.sendMessage"),
    ("permissions missing", {}, "permissions"),
    ("permissions not an object", {"permissions": "deny"}, "permissions"),
    ("permissions empty", {"permissions": {}}, "permissions"),
    ("extra top-level field", {"permissions": {"sendMessage": "deny"}, "role": "x"}, "role"),
    ("body a list", [{"sendMessage": "deny"}], "body"),
]


@pytest.mark.parametrize(("case", "body", "field"), BAD_ROLE_PERMISSIONS, ids=[c for c, _, _ in BAD_ROLE_PERMISSIONS])
def test_set_role_permissions_validation(srv: Server, new_role: Callable[..., str], case: str, body: Any,
                                         field: str) -> None:
    role = new_role()
    write_ok(srv, "PUT", f"/roles/{role}/permissions", {"permissions": {"initiateCall": "deny"}})
    before = all_pages(srv, f"/roles/{role}/permissions")
    bad(srv, "PUT", f"/roles/{role}/permissions", body, field=field)
    assert all_pages(srv, f"/roles/{role}/permissions") == before


def test_set_role_permissions_unknown_role(srv: Server) -> None:
    refused(srv, "PUT", f"/roles/{unique('ghost')}/permissions", {"permissions": {"sendMessage": "deny"}},
            status=404, code="ERR_ROLE_NOT_FOUND")


def test_unset_role_permission(srv: Server) -> None:
    """On a file role: the runtime value wins until unset, then the file value is back."""
    put = write_ok(srv, "PUT", "/roles/support/permissions", {"permissions": {"createGroup": "allow",
                                                                              "listGroups": "deny"}})
    assert put["data"]["permissions"] == {"createGroup": "allow", "listGroups": "deny"}
    row = rows_by_id(all_pages(srv, "/roles/support/permissions"))["createGroup"]
    assert (row["value"], row["source"]) == ("allow", "runtime")
    body = write_ok(srv, "DELETE", "/roles/support/permissions/createGroup")
    assert body["data"]["permissions"] == {"listGroups": "deny"}
    assert isinstance(body["data"]["message"], str)
    row = rows_by_id(all_pages(srv, "/roles/support/permissions"))["createGroup"]
    assert (row["value"], row["source"]) == ("deny", "roles.yaml")
    assert write_ok(srv, "DELETE", "/roles/support/permissions/listGroups")["data"]["permissions"] == {}
    row = rows_by_id(all_pages(srv, "/roles/support/permissions"))["listGroups"]
    assert (row["value"], row["source"]) == ("allow", "catalogue")
    refused(srv, "DELETE", "/roles/support/permissions/createGroup", status=404, code="ERR_PERMISSION_NOT_FOUND")
    refused(srv, "DELETE", "/roles/support/permissions/noSuchKey", status=404, code="ERR_PERMISSION_NOT_FOUND")
    refused(srv, "DELETE", f"/roles/{unique('ghost')}/permissions/createGroup", status=404,
            code="ERR_ROLE_NOT_FOUND")


# -- /roles/{role}/restrictedfeatures ---------------------------------------------------------------
def test_restrict_features_with_and_without_prefix(srv: Server, new_role: Callable[..., str]) -> None:
    role = new_role()
    assert listed(srv, f"/roles/{role}/restrictedfeatures")["data"] == []  # empty list
    body = write_ok(srv, "POST", f"/roles/{role}/restrictedfeatures",
                    {"featuresToRestrict": ["u.createGroup", "listUsers", "createGroup"]})
    assert set(body["data"]) == {"u.createGroup", "listUsers", "createGroup"}
    for key, result in body["data"].items():
        assert result["success"] is True and key in result["message"]
    shown = listed(srv, f"/roles/{role}/restrictedfeatures")
    assert [f["key"] for f in shown["data"]] == ["u.createGroup", "u.listUsers"]
    assert shown["meta"]["pagination"]["total"] == 2
    group_feature = shown["data"][0]
    assert group_feature["title"] == "Create group" and group_feature["actions"] == ["createGroup"]
    assert group_feature["source"] == "runtime"
    # restricting more merges with what is there
    write_ok(srv, "POST", f"/roles/{role}/restrictedfeatures", {"featuresToRestrict": ["u.blockUser"]})
    keys = [f["key"] for f in all_pages(srv, f"/roles/{role}/restrictedfeatures")]
    assert keys == ["u.blockUser", "u.createGroup", "u.listUsers"]
    page2 = listed(srv, f"/roles/{role}/restrictedfeatures?perPage=2&page=2")
    assert [f["key"] for f in page2["data"]] == ["u.listUsers"]
    assert listed(srv, f"/roles/{role}/restrictedfeatures?perPage=2&page=3")["data"] == []


def test_file_role_restrictions_are_listed(srv: Server) -> None:
    shown = listed(srv, "/roles/restricted/restrictedfeatures")["data"]
    assert [(f["key"], f["source"]) for f in shown] == [("u.joinGroup", "roles.yaml")]
    assert listed(srv, "/roles/default/restrictedfeatures")["data"] == []


BAD_RESTRICTS: list[tuple[str, Any, str]] = [
    ("unknown feature", {"featuresToRestrict": ["u.flyToTheMoon"]}, "featuresToRestrict"),
    ("one unknown among good ones", {"featuresToRestrict": ["u.createGroup", "nope"]}, "featuresToRestrict"),
    ("empty list", {"featuresToRestrict": []}, "featuresToRestrict"),
    ("a string", {"featuresToRestrict": "u.createGroup"}, "featuresToRestrict"),
    ("numbers", {"featuresToRestrict": [1]}, "featuresToRestrict"),
    ("missing", {}, "featuresToRestrict"),
    ("unknown field", {"featuresToRestrict": ["u.createGroup"], "allowAll": True}, "allowAll"),
    ("body a list", ["u.createGroup"], "body"),
]


@pytest.mark.parametrize(("case", "body", "field"), BAD_RESTRICTS, ids=[c for c, _, _ in BAD_RESTRICTS])
def test_restrict_features_validation(srv: Server, new_role: Callable[..., str], case: str, body: Any,
                                      field: str) -> None:
    role = new_role()
    bad(srv, "POST", f"/roles/{role}/restrictedfeatures", body, field=field)
    assert listed(srv, f"/roles/{role}/restrictedfeatures")["data"] == []


def test_default_cannot_be_restricted_and_unknown_roles(srv: Server) -> None:
    bad(srv, "POST", "/roles/default/restrictedfeatures", {"featuresToRestrict": ["u.createGroup"]}, field="role")
    assert listed(srv, "/roles/default/restrictedfeatures")["data"] == []
    ghost = unique("ghost")
    refused(srv, "POST", f"/roles/{ghost}/restrictedfeatures", {"featuresToRestrict": ["u.createGroup"]},
            status=404, code="ERR_ROLE_NOT_FOUND")
    error_of(srv.get(f"/roles/{ghost}/restrictedfeatures"), 404, "ERR_ROLE_NOT_FOUND")
    refused(srv, "DELETE", f"/roles/{ghost}/restrictedfeatures", {"allowAll": True}, status=404,
            code="ERR_ROLE_NOT_FOUND")


def test_allow_features(srv: Server, new_role: Callable[..., str]) -> None:
    role = new_role()
    write_ok(srv, "POST", f"/roles/{role}/restrictedfeatures",
             {"featuresToRestrict": ["u.createGroup", "u.listUsers", "u.blockUser", "u.joinGroup"]})
    body = write_ok(srv, "DELETE", f"/roles/{role}/restrictedfeatures", {"featuresToAllow": ["createGroup", "u.listUsers"]})
    assert body["data"]["success"] is True and isinstance(body["data"]["message"], str)
    assert [f["key"] for f in all_pages(srv, f"/roles/{role}/restrictedfeatures")] == ["u.blockUser", "u.joinGroup"]
    # allowAll wins over featuresToAllow (even an unknown key there)
    write_ok(srv, "DELETE", f"/roles/{role}/restrictedfeatures", {"allowAll": True, "featuresToAllow": ["u.nope"]})
    assert listed(srv, f"/roles/{role}/restrictedfeatures")["data"] == []
    for body_, field in (({"allowAll": "yes"}, "allowAll"), ({"allowAll": 1}, "allowAll"),
                         ({}, "featuresToAllow"), ({"allowAll": False}, "featuresToAllow"),
                         ({"featuresToAllow": []}, "featuresToAllow"), ({"featuresToAllow": ["u.nope"]}, "featuresToAllow"),
                         ({"featuresToAllow": ["u.createGroup"], "featuresToRestrict": []}, "featuresToRestrict")):
        bad(srv, "DELETE", f"/roles/{role}/restrictedfeatures", body_, field=field)


def test_allowing_a_feature_that_is_not_restricted_is_a_no_op(srv: Server, new_role: Callable[..., str]) -> None:
    """Spec §5 [F]: allowing an unrestricted key is a no-op; a write that changes nothing keeps the revision."""
    role = new_role()
    write_ok(srv, "DELETE", f"/roles/{role}/restrictedfeatures", {"featuresToAllow": ["u.createGroup"]}, changes=False)
    write_ok(srv, "DELETE", f"/roles/{role}/restrictedfeatures", {"allowAll": True}, changes=False)
    write_ok(srv, "POST", f"/roles/{role}/restrictedfeatures", {"featuresToRestrict": ["u.listUsers"]})
    write_ok(srv, "DELETE", f"/roles/{role}/restrictedfeatures", {"featuresToAllow": ["u.createGroup"]}, changes=False)


def test_allow_all_on_a_file_role_overrides_its_file_restrictions(srv: Server) -> None:
    uid = unique("restricted")
    write_ok(srv, "PUT", f"/users/{uid}", {"role": "restricted"})
    assert srv.authorize(uid, "joinGroup")["allowed"] is False
    try:
        write_ok(srv, "DELETE", "/roles/restricted/restrictedfeatures", {"allowAll": True})
        assert listed(srv, "/roles/restricted/restrictedfeatures")["data"] == []
        assert srv.authorize(uid, "joinGroup")["allowed"] is True
    finally:
        srv.post("/roles/restricted/restrictedfeatures", {"featuresToRestrict": ["u.joinGroup"]})
    assert srv.authorize(uid, "joinGroup")["allowed"] is False


# -- /users/{uid} -----------------------------------------------------------------------------------
def test_users_put_get_delete(srv: Server) -> None:
    uid = unique("User").upper()
    low = uid.lower()
    assert srv.ok("GET", f"/users/{uid}")["data"] == {"uid": low, "role": "default", "assigned": False}
    body = write_ok(srv, "PUT", f"/users/{uid}", {"role": "SUPPORT"})
    assert body["data"] == {"uid": low, "role": "support", "assigned": True}
    assert srv.ok("GET", f"/users/{low}")["data"] == {"uid": low, "role": "support", "assigned": True}
    write_ok(srv, "PUT", f"/users/{low}", {"role": "support"}, changes=False)  # same role: no change
    write_ok(srv, "PUT", f"/users/{low}", {"role": "restricted"})
    gone = write_ok(srv, "DELETE", f"/users/{low}")
    assert gone["data"]["success"] is True and isinstance(gone["data"]["message"], str)
    assert srv.ok("GET", f"/users/{low}")["data"] == {"uid": low, "role": "default", "assigned": False}
    write_ok(srv, "DELETE", f"/users/{low}", changes=False)  # deleting an unassigned user changes nothing
    # the default role for a user that has it already changes nothing
    write_ok(srv, "PUT", f"/users/{low}", {"role": "default"}, changes=False)


BAD_USERS: list[tuple[str, str, Any, str]] = [
    ("role missing", "ok-user", {}, "role"),
    ("role not a string", "ok-user", {"role": 5}, "role"),
    ("role with a space", "ok-user", {"role": "sup port"}, "role"),
    ("unknown field", "ok-user", {"role": "support", "name": "Ann"}, "name"),
    ("body a list", "ok-user", ["support"], "body"),
    ("uid with a space", quote("bad uid"), {"role": "support"}, "uid"),
    ("uid over 100", "u" * 101, {"role": "support"}, "uid"),
]


@pytest.mark.parametrize(("case", "uid", "body", "field"), BAD_USERS, ids=[c for c, *_ in BAD_USERS])
def test_users_validation(srv: Server, case: str, uid: str, body: Any, field: str) -> None:
    bad(srv, "PUT", f"/users/{uid}", body, field=field)


def test_users_errors(srv: Server) -> None:
    uid = unique("user")
    refused(srv, "PUT", f"/users/{uid}", {"role": unique("ghost")}, status=404, code="ERR_ROLE_NOT_FOUND")
    assert srv.ok("GET", f"/users/{uid}")["data"]["assigned"] is False
    bad(srv, "GET", "/users/" + quote("bad uid"), field="uid")
    bad(srv, "DELETE", "/users/" + "u" * 101, field="uid")
    assert srv.ok("GET", "/users/" + "u" * 100)["data"]["uid"] == "u" * 100


# -- /groups/{guid} ---------------------------------------------------------------------------------
def test_groups_put_get_delete(srv: Server) -> None:
    guid, owner = unique("Grp").upper(), unique("owner")
    low = guid.lower()
    error_of(srv.get(f"/groups/{low}"), 404, "ERR_GUID_NOT_FOUND")
    body = write_ok(srv, "PUT", f"/groups/{guid}", {"owner": owner})
    assert body["data"] == {"guid": low, "owner": owner, "membersCount": 1, "bannedCount": 0, "hasOverrides": False}
    assert members_of(srv, low) == {owner: "admin"}  # the owner is an admin member
    write_ok(srv, "PUT", f"/groups/{low}", {"owner": owner}, changes=False)  # same owner: no change
    # members, bans and overrides show in the group
    write_ok(srv, "POST", f"/groups/{low}/members", {"participants": ["gp-1", "gp-2"], "usersToBan": ["gb-1"]})
    write_ok(srv, "PUT", f"/groups/{low}/scopes/participant/permissions", {"permissions": {"sendMessage": "deny"}})
    shown = srv.ok("GET", f"/groups/{low}")["data"]
    assert shown == {"guid": low, "owner": owner, "membersCount": 3, "bannedCount": 1, "hasOverrides": True}
    # a new owner becomes an admin; the old one stays a member
    new_owner = unique("owner2")
    moved = write_ok(srv, "PUT", f"/groups/{low}", {"owner": new_owner})["data"]
    assert moved["owner"] == new_owner and moved["membersCount"] == 4
    assert members_of(srv, low)[new_owner] == "admin" and members_of(srv, low)[owner] == "admin"
    # a banned user is never made owner (it unbanned them as a side effect): unban first
    refused(srv, "PUT", f"/groups/{low}", {"owner": "gb-1"}, status=400, code="ERR_BANNED_GROUPMEMBER")
    assert banned_in(srv, low) == ["gb-1"]
    write_ok(srv, "DELETE", f"/groups/{low}/bannedusers/gb-1")
    write_ok(srv, "PUT", f"/groups/{low}", {"owner": "gb-1"})
    assert banned_in(srv, low) == [] and members_of(srv, low)["gb-1"] == "admin"
    # delete removes members, bans and overrides: a group of the same id starts clean
    gone = write_ok(srv, "DELETE", f"/groups/{low}")
    assert gone["data"]["success"] is True and low in gone["data"]["message"]
    for path in (f"/groups/{low}", f"/groups/{low}/members", f"/groups/{low}/bannedusers",
                 f"/groups/{low}/scopes/participant/permissions"):
        error_of(srv.get(path), 404, "ERR_GUID_NOT_FOUND")
    refused(srv, "DELETE", f"/groups/{low}", status=404, code="ERR_GUID_NOT_FOUND")
    again = write_ok(srv, "PUT", f"/groups/{low}", {"owner": owner})["data"]
    assert again == {"guid": low, "owner": owner, "membersCount": 1, "bannedCount": 0, "hasOverrides": False}
    rows = rows_by_id(all_pages(srv, f"/groups/{low}/scopes/participant/permissions"))
    assert rows["sendMessage"]["source"] != "group override"


BAD_GROUPS: list[tuple[str, str, Any, str]] = [
    ("owner missing", "ok-grp", {}, "owner"),
    ("owner not a string", "ok-grp", {"owner": 5}, "owner"),
    ("owner with a space", "ok-grp", {"owner": "an owner"}, "owner"),
    ("owner over 100", "ok-grp", {"owner": "o" * 101}, "owner"),
    ("unknown field", "ok-grp", {"owner": "o", "name": "Group"}, "name"),
    ("body a list", "ok-grp", [], "body"),
    ("guid with a space", quote("bad grp"), {"owner": "o"}, "guid"),
    ("guid over 100", "g" * 101, {"owner": "o"}, "guid"),
]


@pytest.mark.parametrize(("case", "guid", "body", "field"), BAD_GROUPS, ids=[c for c, *_ in BAD_GROUPS])
def test_groups_validation(srv: Server, case: str, guid: str, body: Any, field: str) -> None:
    bad(srv, "PUT", f"/groups/{guid}", body, field=field)
    error_of(srv.get("/groups/ok-grp"), 404, "ERR_GUID_NOT_FOUND")


def test_bad_on_behalf_of_header(srv: Server) -> None:
    guid, _ = new_group(srv, participants=["obo-p"])
    for header in ("bad uid", "x" * 101, ""):
        bad(srv, "DELETE", f"/groups/{guid}/members/obo-p", field="onBehalfOf", headers={"onBehalfOf": header})
    assert members_of(srv, guid)["obo-p"] == "participant"


# -- POST /groups/{guid}/members --------------------------------------------------------------------
def test_add_members_success_shape(srv: Server) -> None:
    guid, owner = new_group(srv)
    body = write_ok(srv, "POST", f"/groups/{guid}/members",
                    {"admins": ["am-1"], "moderators": ["mm-1"], "participants": ["pm-1", "pm-2"], "usersToBan": ["bm-1"]})
    assert body["data"] == {"admins": {"am-1": {"success": True}}, "moderators": {"mm-1": {"success": True}},
                            "participants": {"pm-1": {"success": True}, "pm-2": {"success": True}},
                            "usersToBan": {"bm-1": {"success": True}}}
    assert members_of(srv, guid) == {owner: "admin", "am-1": "admin", "mm-1": "moderator", "pm-1": "participant",
                                     "pm-2": "participant"}
    assert banned_in(srv, guid) == ["bm-1"]
    # lists without entries are left out of the answer
    only = write_ok(srv, "POST", f"/groups/{guid}/members", {"participants": ["pm-3"], "admins": []})
    assert only["data"] == {"participants": {"pm-3": {"success": True}}}
    # uids are lowercased
    write_ok(srv, "POST", f"/groups/{guid}/members", {"moderators": ["MixedCase-Uid"]})
    assert members_of(srv, guid)["mixedcase-uid"] == "moderator"


def test_add_members_highest_scope_wins(srv: Server) -> None:
    guid, _ = new_group(srv)
    body = write_ok(srv, "POST", f"/groups/{guid}/members",
                    {"participants": ["hs-1", "hs-2", "hs-3"], "moderators": ["hs-1", "hs-2"], "admins": ["hs-1"]})
    assert body["data"] == {"admins": {"hs-1": {"success": True}}, "moderators": {"hs-2": {"success": True}},
                            "participants": {"hs-3": {"success": True}}}
    members = members_of(srv, guid)
    assert (members["hs-1"], members["hs-2"], members["hs-3"]) == ("admin", "moderator", "participant")
    # the same uid twice in one list is one member
    twice = write_ok(srv, "POST", f"/groups/{guid}/members", {"participants": ["hs-4", "hs-4"]})
    assert twice["data"] == {"participants": {"hs-4": {"success": True}}}


def test_add_members_a_uid_listed_twice_in_two_casings_is_one_uid(srv: Server) -> None:
    """Uids are lowercased (spec §2.2), so "Dup-X" and "dup-x" are one uid listed twice: the highest scope
    wins and the uid appears only under that key (spec §6)."""
    guid, _ = new_group(srv)
    body = write_ok(srv, "POST", f"/groups/{guid}/members", {"admins": ["Dup-X"], "participants": ["dup-x"]})
    assert members_of(srv, guid)["dup-x"] == "admin"
    assert "participants" not in body["data"], body["data"]


def test_add_members_per_member_results(srv: Server) -> None:
    """One bad uid fails alone; the others are done in the same write."""
    guid, owner = new_group(srv, participants=["pr-member"], usersToBan=["pr-banned", "pr-banned2"])
    body = write_ok(srv, "POST", f"/groups/{guid}/members", {
        "participants": ["pr-new-1", "bad uid", "pr-member", "pr-banned", "x" * 101],
        "moderators": ["pr-new-2"],
        "usersToBan": [owner, "pr-banned2", "pr-new-ban", "pr-member-2"],
    })
    data = body["data"]
    assert data["participants"]["pr-new-1"] == {"success": True}
    assert data["moderators"]["pr-new-2"] == {"success": True}
    assert data["usersToBan"]["pr-new-ban"] == {"success": True}
    assert data["usersToBan"]["pr-member-2"] == {"success": True}
    expected_errors = {("participants", "bad uid"): "ERR_BAD_REQUEST", ("participants", "x" * 101): "ERR_BAD_REQUEST",
                       ("participants", "pr-member"): "ERR_ALREADY_JOINED",
                       ("participants", "pr-banned"): "ERR_BANNED_GROUPMEMBER",
                       ("usersToBan", owner): "ERR_GROUP_NO_CLEARANCE",
                       ("usersToBan", "pr-banned2"): "ERR_ALREADY_BANNED"}
    for (list_name, uid), code in expected_errors.items():
        result = data[list_name][uid]
        assert result["success"] is False, (uid, result)
        assert result["error"]["code"] == code, (uid, result)
        assert isinstance(result["error"]["message"], str) and result["error"]["message"]
    members = members_of(srv, guid)
    assert members == {owner: "admin", "pr-member": "participant", "pr-new-1": "participant", "pr-new-2": "moderator"}
    assert banned_in(srv, guid) == ["pr-banned", "pr-banned2", "pr-member-2", "pr-new-ban"]


def test_add_members_all_failing_changes_nothing(srv: Server) -> None:
    guid, owner = new_group(srv, participants=["af-1"], usersToBan=["af-b"])
    before = members_of(srv, guid)
    body = write_ok(srv, "POST", f"/groups/{guid}/members",
                    {"participants": ["af-1", "af-b"], "usersToBan": [owner]}, changes=False)
    assert all(not r["success"] for lst in body["data"].values() for r in lst.values())
    assert members_of(srv, guid) == before and banned_in(srv, guid) == ["af-b"]


def test_add_members_25_uids_at_most(srv: Server) -> None:
    guid, owner = new_group(srv)
    uids = [f"cap-{i:02d}" for i in range(26)]
    bad(srv, "POST", f"/groups/{guid}/members", {"participants": uids}, field="participants")
    bad(srv, "POST", f"/groups/{guid}/members",
        {"admins": uids[:5], "moderators": uids[5:10], "participants": uids[10:20], "usersToBan": uids[20:26]},
        field="participants")
    assert members_of(srv, guid) == {owner: "admin"} and banned_in(srv, guid) == []
    body = write_ok(srv, "POST", f"/groups/{guid}/members",
                    {"admins": uids[:5], "moderators": uids[5:10], "participants": uids[10:20], "usersToBan": uids[20:25]})
    assert sum(len(v) for v in body["data"].values()) == 25
    assert len(members_of(srv, guid)) == 21 and len(banned_in(srv, guid)) == 5


BAD_ADDS: list[tuple[str, Any, str]] = [
    ("no uid at all", {}, "participants"),
    ("only empty lists", {"participants": [], "admins": []}, "participants"),
    ("list is a string", {"participants": "u1"}, "participants"),
    ("list of numbers", {"admins": [1, 2]}, "admins"),
    ("list of objects", {"moderators": [{"uid": "u"}]}, "moderators"),
    ("usersToBan a string", {"usersToBan": "u1"}, "usersToBan"),
    ("unknown list", {"participants": ["u1"], "owners": ["u2"]}, "owners"),
    ("added and banned at once", {"participants": ["u1"], "usersToBan": ["u1"]}, "usersToBan"),
    ("body a list", ["u1"], "body"),
]


@pytest.mark.parametrize(("case", "body", "field"), BAD_ADDS, ids=[c for c, _, _ in BAD_ADDS])
def test_add_members_validation(srv: Server, case: str, body: Any, field: str) -> None:
    guid, owner = new_group(srv)
    bad(srv, "POST", f"/groups/{guid}/members", body, field=field)
    assert members_of(srv, guid) == {owner: "admin"} and banned_in(srv, guid) == []


def test_add_members_to_an_unknown_group(srv: Server) -> None:
    guid = unique("ghost")
    refused(srv, "POST", f"/groups/{guid}/members", {"participants": ["u1"]}, status=404, code="ERR_GUID_NOT_FOUND")
    bad(srv, "POST", "/groups/" + quote("bad grp") + "/members", {"participants": ["u1"]}, field="guid")


# -- GET /groups/{guid}/members ---------------------------------------------------------------------
def test_list_members_paging_and_scope_filter(srv: Server) -> None:
    guid, owner = new_group(srv, admins=["lm-a"], moderators=["lm-m1", "lm-m2"],
                            participants=[f"lm-p{i}" for i in range(4)])
    role_holder = "lm-p0"
    write_ok(srv, "PUT", f"/users/{role_holder}", {"role": "support"})
    everything = listed(srv, f"/groups/{guid}/members")
    assert everything["meta"]["pagination"] == {"total": 8, "count": 8, "per_page": 100, "current_page": 1,
                                                "total_pages": 1}
    uids = [m["uid"] for m in everything["data"]]
    assert uids == sorted(uids)
    for member in everything["data"]:
        assert set(member) >= {"uid", "scope", "role"}, member
        assert member["role"] == ("support" if member["uid"] == role_holder else "default")
    pages = [listed(srv, f"/groups/{guid}/members?perPage=3&page={p}") for p in (1, 2, 3)]
    assert [m["uid"] for p in pages for m in p["data"]] == uids
    assert pages[2]["meta"]["pagination"] == {"total": 8, "count": 2, "per_page": 3, "current_page": 3,
                                              "total_pages": 3}
    beyond = listed(srv, f"/groups/{guid}/members?perPage=3&page=4")
    assert beyond["data"] == [] and beyond["meta"]["pagination"]["total"] == 8
    assert listed(srv, f"/groups/{guid}/members?perPage=1000")["meta"]["pagination"]["count"] == 8
    # the scopes filter
    admins = listed(srv, f"/groups/{guid}/members?scopes=admin")
    assert {m["uid"] for m in admins["data"]} == {owner, "lm-a"} and admins["meta"]["pagination"]["total"] == 2
    staff = listed(srv, f"/groups/{guid}/members?scopes=moderator,admin")
    assert {m["scope"] for m in staff["data"]} == {"admin", "moderator"} and len(staff["data"]) == 4
    parts = listed(srv, f"/groups/{guid}/members?scopes=participant&perPage=3&page=2")
    assert parts["meta"]["pagination"]["total"] == 4 and [m["uid"] for m in parts["data"]] == ["lm-p3"]
    for query, field in (("scopes=owner", "scopes"), ("scopes=admin,owner", "scopes"), ("perPage=1001", "perPage"),
                         ("perPage=0", "perPage"), ("page=0", "page"), ("page=abc", "page")):
        bad(srv, "GET", f"/groups/{guid}/members?{query}", field=field)


def test_list_members_empty_and_unknown(srv: Server) -> None:
    guid, _ = new_group(srv)
    empty = listed(srv, f"/groups/{guid}/members?scopes=moderator")
    assert empty["data"] == []
    assert empty["meta"]["pagination"] == {"total": 0, "count": 0, "per_page": 100, "current_page": 1,
                                           "total_pages": 1}
    error_of(srv.get(f"/groups/{unique('ghost')}/members"), 404, "ERR_GUID_NOT_FOUND")


# -- PUT / DELETE /groups/{guid}/members/{uid} ------------------------------------------------------
def test_set_member_scope(srv: Server) -> None:
    guid, owner = new_group(srv, participants=["sm-p"])
    body = write_ok(srv, "PUT", f"/groups/{guid}/members/sm-p", {"scope": "moderator"})
    assert body["data"] == {"guid": guid, "uid": "sm-p", "scope": "moderator"}
    added = write_ok(srv, "PUT", f"/groups/{guid}/members/SM-New", {"scope": "admin"})  # adds a new member
    assert added["data"] == {"guid": guid, "uid": "sm-new", "scope": "admin"}
    assert members_of(srv, guid) == {owner: "admin", "sm-p": "moderator", "sm-new": "admin"}
    refused(srv, "PUT", f"/groups/{guid}/members/sm-p", {"scope": "moderator"}, status=400, code="ERR_SAME_SCOPE")
    refused(srv, "PUT", f"/groups/{guid}/members/{owner}", {"scope": "participant"}, status=403,
            code="ERR_GROUP_NO_SCOPE_CLEARANCE")
    refused(srv, "PUT", f"/groups/{unique('ghost')}/members/sm-p", {"scope": "admin"}, status=404,
            code="ERR_GUID_NOT_FOUND")
    write_ok(srv, "POST", f"/groups/{guid}/bannedusers/sm-p")
    refused(srv, "PUT", f"/groups/{guid}/members/sm-p", {"scope": "participant"}, status=400,
            code="ERR_BANNED_GROUPMEMBER")
    assert members_of(srv, guid) == {owner: "admin", "sm-new": "admin"}


@pytest.mark.parametrize(("body", "field"), [
    ({}, "scope"), ({"scope": "owner"}, "scope"), ({"scope": "Admin"}, "scope"), ({"scope": 3}, "scope"),
    ({"scope": ["admin"]}, "scope"), ({"scope": {"admin": True}}, "scope"), ({"scope": "admin", "joinedAt": 1}, "joinedAt"),
    ([], "body"),
])
def test_set_member_validation(srv: Server, body: Any, field: str) -> None:
    guid, owner = new_group(srv, participants=["sv-p"])
    bad(srv, "PUT", f"/groups/{guid}/members/sv-p", body, field=field)
    bad(srv, "PUT", f"/groups/{guid}/members/" + quote("bad uid"), {"scope": "admin"}, field="uid")
    assert members_of(srv, guid) == {owner: "admin", "sv-p": "participant"}


def test_kick_member(srv: Server) -> None:
    guid, owner = new_group(srv, participants=["km-p"])
    body = write_ok(srv, "DELETE", f"/groups/{guid}/members/km-p")
    assert body["data"]["success"] is True and "km-p" in body["data"]["message"] and guid in body["data"]["message"]
    assert members_of(srv, guid) == {owner: "admin"}
    assert banned_in(srv, guid) == []  # a kick is not a ban: the user may come back
    write_ok(srv, "PUT", f"/groups/{guid}/members/km-p", {"scope": "participant"})
    write_ok(srv, "DELETE", f"/groups/{guid}/members/km-p")
    refused(srv, "DELETE", f"/groups/{guid}/members/km-p", status=400, code="ERR_NOT_A_MEMBER")
    refused(srv, "DELETE", f"/groups/{guid}/members/{owner}", status=403, code="ERR_GROUP_NO_CLEARANCE")
    refused(srv, "DELETE", f"/groups/{unique('ghost')}/members/km-p", status=404, code="ERR_GUID_NOT_FOUND")
    bad(srv, "DELETE", f"/groups/{guid}/members/" + quote("bad uid"), field="uid")
    assert members_of(srv, guid) == {owner: "admin"}


# -- /groups/{guid}/bannedusers ---------------------------------------------------------------------
def test_ban_and_unban(srv: Server) -> None:
    guid, owner = new_group(srv, moderators=["bu-m"], participants=["bu-p"])
    body = write_ok(srv, "POST", f"/groups/{guid}/bannedusers/bu-m")
    assert body["data"]["success"] is True and "bu-m" in body["data"]["message"]
    assert "bu-m" not in members_of(srv, guid)  # a ban removes membership
    write_ok(srv, "POST", f"/groups/{guid}/bannedusers/BU-Outsider")  # a non-member can be banned too
    assert banned_in(srv, guid) == ["bu-m", "bu-outsider"]
    refused(srv, "POST", f"/groups/{guid}/bannedusers/bu-m", status=400, code="ERR_ALREADY_BANNED")
    refused(srv, "POST", f"/groups/{guid}/bannedusers/{owner}", status=403, code="ERR_GROUP_NO_CLEARANCE")
    refused(srv, "POST", f"/groups/{unique('ghost')}/bannedusers/bu-m", status=404, code="ERR_GUID_NOT_FOUND")
    bad(srv, "POST", f"/groups/{guid}/bannedusers/" + quote("bad uid"), field="uid")
    # a banned user can't be added back until unbanned
    refused(srv, "PUT", f"/groups/{guid}/members/bu-m", {"scope": "participant"}, status=400,
            code="ERR_BANNED_GROUPMEMBER")
    add = write_ok(srv, "POST", f"/groups/{guid}/members", {"moderators": ["bu-m"]}, changes=False)
    assert add["data"]["moderators"]["bu-m"]["error"]["code"] == "ERR_BANNED_GROUPMEMBER"
    unban = write_ok(srv, "DELETE", f"/groups/{guid}/bannedusers/bu-m")
    assert unban["data"]["success"] is True and "bu-m" in unban["data"]["message"]
    assert banned_in(srv, guid) == ["bu-outsider"]
    assert "bu-m" not in members_of(srv, guid)  # unbanning does not re-add
    write_ok(srv, "POST", f"/groups/{guid}/members", {"participants": ["bu-m"]})
    assert members_of(srv, guid)["bu-m"] == "participant"
    refused(srv, "DELETE", f"/groups/{guid}/bannedusers/bu-m", status=400, code="ERR_NOT_A_BANNED_USER")
    refused(srv, "DELETE", f"/groups/{unique('ghost')}/bannedusers/bu-m", status=404, code="ERR_GUID_NOT_FOUND")


def test_list_banned_users_paging(srv: Server) -> None:
    guid, _ = new_group(srv)
    empty = listed(srv, f"/groups/{guid}/bannedusers")
    assert empty["data"] == [] and empty["meta"]["pagination"]["total"] == 0
    banned = [f"lb-{i}" for i in range(5)]
    write_ok(srv, "POST", f"/groups/{guid}/members", {"usersToBan": banned})
    everything = listed(srv, f"/groups/{guid}/bannedusers")
    assert everything["data"] == [{"uid": uid} for uid in banned]
    last = listed(srv, f"/groups/{guid}/bannedusers?perPage=2&page=3")
    assert last["data"] == [{"uid": "lb-4"}]
    assert last["meta"]["pagination"] == {"total": 5, "count": 1, "per_page": 2, "current_page": 3,
                                          "total_pages": 3}
    assert listed(srv, f"/groups/{guid}/bannedusers?perPage=2&page=4")["data"] == []
    bad(srv, "GET", f"/groups/{guid}/bannedusers?perPage=1001", field="perPage")
    error_of(srv.get(f"/groups/{unique('ghost')}/bannedusers"), 404, "ERR_GUID_NOT_FOUND")


# -- /groups/{guid}/scopes/{scope}/permissions ------------------------------------------------------
def test_scope_permissions_list_shape(srv: Server) -> None:
    guid, _ = new_group(srv)
    for scope in SCOPES:
        rows = all_pages(srv, f"/groups/{guid}/scopes/{scope}/permissions")
        assert len(rows) == SCOPE_KEY_COUNT
        for row in rows:
            assert set(row) == ROW_FIELDS and row["type"] == "scope", row
    admin = rows_by_id(all_pages(srv, f"/groups/{guid}/scopes/admin/permissions"))
    participant = rows_by_id(all_pages(srv, f"/groups/{guid}/scopes/participant/permissions"))
    assert (admin["addMembers"]["value"], admin["addMembers"]["source"]) == ("allow", "scopes.yaml")
    assert (participant["addMembers"]["value"], participant["addMembers"]["source"]) == ("deny", "scopes.yaml")
    assert participant["addMembers"]["defaultValue"] == "deny"
    assert (participant["sendMessage"]["value"], participant["sendMessage"]["source"]) == ("allow", "catalogue")
    page = listed(srv, f"/groups/{guid}/scopes/admin/permissions?perPage=10&page=4")
    assert page["meta"]["pagination"]["count"] == SCOPE_KEY_COUNT - 30
    assert listed(srv, f"/groups/{guid}/scopes/admin/permissions?perPage=10&page=5")["data"] == []
    bad(srv, "GET", f"/groups/{guid}/scopes/admin/permissions?perPage=1001", field="perPage")


def test_scope_permissions_errors(srv: Server) -> None:
    guid, _ = new_group(srv)
    ghost = unique("ghost")
    body = {"permissions": {"addMembers": "allow"}}
    for scope in ("owner", "Admin", "members"):
        error_of(srv.get(f"/groups/{guid}/scopes/{scope}/permissions"), 404, "ERR_GROUP_SCOPE_NOT_FOUND")
        refused(srv, "PUT", f"/groups/{guid}/scopes/{scope}/permissions", body, status=404,
                code="ERR_GROUP_SCOPE_NOT_FOUND")
        refused(srv, "DELETE", f"/groups/{guid}/scopes/{scope}/permissions/addMembers", status=404,
                code="ERR_GROUP_SCOPE_NOT_FOUND")
    error_of(srv.get(f"/groups/{ghost}/scopes/admin/permissions"), 404, "ERR_GUID_NOT_FOUND")
    refused(srv, "PUT", f"/groups/{ghost}/scopes/admin/permissions", body, status=404, code="ERR_GUID_NOT_FOUND")
    refused(srv, "DELETE", f"/groups/{ghost}/scopes/admin/permissions/addMembers", status=404,
            code="ERR_GUID_NOT_FOUND")
    refused(srv, "DELETE", f"/groups/{guid}/scopes/participant/permissions/addMembers", status=404,
            code="ERR_PERMISSION_NOT_FOUND")
    refused(srv, "DELETE", f"/groups/{guid}/scopes/participant/permissions/noSuchKey", status=404,
            code="ERR_PERMISSION_NOT_FOUND")


def test_set_and_unset_scope_permissions(srv: Server) -> None:
    guid, _ = new_group(srv)
    other, _ = new_group(srv)
    body = write_ok(srv, "PUT", f"/groups/{guid}/scopes/participant/permissions",
                    {"permissions": {"addMembers": "allow", "sendMessage.allowedMessageTypes": ["text"]}})
    data = body["data"]
    assert set(data) == {"addMembers", "sendMessage.allowedMessageTypes", "permissions"}
    for key in ("addMembers", "sendMessage.allowedMessageTypes"):
        message = data[key]["message"]
        assert data[key]["success"] is True and key in message and "participant" in message and guid in message
    assert data["permissions"] == {"addMembers": "allow", "sendMessage.allowedMessageTypes": ["text"]}
    merged = write_ok(srv, "PUT", f"/groups/{guid}/scopes/participant/permissions",
                      {"permissions": {"kickMembers": "allow", "kickMembers.allowedScopes": "participant"}})
    assert merged["data"]["permissions"] == {"addMembers": "allow", "sendMessage.allowedMessageTypes": ["text"],
                                             "kickMembers": "allow", "kickMembers.allowedScopes": ["participant"]}
    rows = rows_by_id(all_pages(srv, f"/groups/{guid}/scopes/participant/permissions"))
    assert (rows["addMembers"]["value"], rows["addMembers"]["source"]) == ("allow", "group override")
    # the override is for that group and scope alone
    other_rows = rows_by_id(all_pages(srv, f"/groups/{other}/scopes/participant/permissions"))
    assert (other_rows["addMembers"]["value"], other_rows["addMembers"]["source"]) == ("deny", "scopes.yaml")
    moderator_rows = rows_by_id(all_pages(srv, f"/groups/{guid}/scopes/moderator/permissions"))
    assert moderator_rows["addMembers"]["source"] == "scopes.yaml"
    assert srv.ok("GET", f"/groups/{guid}")["data"]["hasOverrides"] is True
    assert srv.ok("GET", f"/groups/{other}")["data"]["hasOverrides"] is False
    # unset: the rest stays, the key is back to its file value
    unset = write_ok(srv, "DELETE", f"/groups/{guid}/scopes/participant/permissions/addMembers")
    assert unset["data"]["permissions"] == {"sendMessage.allowedMessageTypes": ["text"], "kickMembers": "allow",
                                            "kickMembers.allowedScopes": ["participant"]}
    assert isinstance(unset["data"]["message"], str)
    rows = rows_by_id(all_pages(srv, f"/groups/{guid}/scopes/participant/permissions"))
    assert (rows["addMembers"]["value"], rows["addMembers"]["source"]) == ("deny", "scopes.yaml")
    refused(srv, "DELETE", f"/groups/{guid}/scopes/participant/permissions/addMembers", status=404,
            code="ERR_PERMISSION_NOT_FOUND")
    for key in ("sendMessage.allowedMessageTypes", "kickMembers", "kickMembers.allowedScopes"):
        write_ok(srv, "DELETE", f"/groups/{guid}/scopes/participant/permissions/{key}")
    assert srv.ok("GET", f"/groups/{guid}")["data"]["hasOverrides"] is False


BAD_SCOPE_PERMISSIONS: list[tuple[str, Any, str]] = [
    ("unknown key", {"permissions": {"noSuchKey": "allow"}}, "permissions.noSuchKey"),
    ("role-only key", {"permissions": {"createGroup": "allow"}}, "permissions.createGroup"),
    ("value outside allow/deny", {"permissions": {"addMembers": "maybe"}}, "permissions.addMembers"),
    ("boolean value", {"permissions": {"addMembers": False}}, "permissions.addMembers"),
    ("scope array outside the vocabulary", {"permissions": {"kickMembers.allowedScopes": ["participant", "owner"]}},
     "permissions.kickMembers.allowedScopes"),
    ("one bad key fails all", {"permissions": {"editGroup": "allow", "ban": "sometimes"}}, "permissions.ban"),
    ("permissions missing", {}, "permissions"),
    ("permissions a list", {"permissions": ["addMembers"]}, "permissions"),
    ("permissions empty", {"permissions": {}}, "permissions"),
    ("extra top-level field", {"permissions": {"addMembers": "allow"}, "scope": "admin"}, "scope"),
    ("body a string", "addMembers", "body"),
]


@pytest.mark.parametrize(("case", "body", "field"), BAD_SCOPE_PERMISSIONS, ids=[c for c, _, _ in BAD_SCOPE_PERMISSIONS])
def test_set_scope_permissions_validation(srv: Server, case: str, body: Any, field: str) -> None:
    guid, _ = new_group(srv)
    write_ok(srv, "PUT", f"/groups/{guid}/scopes/participant/permissions", {"permissions": {"sendMessage": "deny"}})
    before = all_pages(srv, f"/groups/{guid}/scopes/participant/permissions")
    bad(srv, "PUT", f"/groups/{guid}/scopes/participant/permissions", body, field=field)
    assert all_pages(srv, f"/groups/{guid}/scopes/participant/permissions") == before


# -- GET /changes -----------------------------------------------------------------------------------
def test_changes_shape_and_paging(srv: Server) -> None:
    start = srv.revision()
    guid, owner = new_group(srv)
    write_ok(srv, "PUT", f"/groups/{guid}/members/ch-p", {"scope": "participant"})
    write_ok(srv, "PUT", f"/groups/{guid}/members/ch-p", {"scope": "moderator"})
    write_ok(srv, "DELETE", f"/groups/{guid}/members/ch-p")
    end = srv.revision()
    assert end == start + 4
    body = listed(srv, f"/changes?since={start}")
    entries = body["data"]
    assert [e["revision"] for e in entries] == list(range(start + 1, end + 1))
    for entry in entries:
        assert set(entry) == {"revision", "at", "actor", "ops"}, entry
        assert entry["actor"] == "admin" and isinstance(entry["at"], float | int)
        assert entry["ops"] and all("before" in op for op in entry["ops"])
    assert entries[0]["ops"][0] == {"op": "put_group", "guid": guid, "owner": owner,
                                    "before": {"owner": None, "members": 0, "bans": 0, "overrides": None}}
    assert entries[2]["ops"] == [{"op": "put_member", "guid": guid, "uid": "ch-p", "scope": "moderator",
                                  "before": {"scope": "participant", "banned": False}}]
    assert entries[3]["ops"] == [{"op": "delete_member", "guid": guid, "uid": "ch-p",
                                  "before": {"scope": "moderator", "banned": False}}]
    # paging: the last page, a page out of range, the revision after the newest
    page2 = listed(srv, f"/changes?since={start}&perPage=3&page=2")
    assert [e["revision"] for e in page2["data"]] == [end]
    assert page2["meta"]["pagination"] == {"total": 4, "count": 1, "per_page": 3, "current_page": 2, "total_pages": 2}
    assert listed(srv, f"/changes?since={start}&perPage=3&page=3")["data"] == []
    assert listed(srv, f"/changes?since={end}")["data"] == []
    assert listed(srv, f"/changes?since={end + 1000}")["meta"]["pagination"]["total"] == 0
    everything = all_pages(srv, "/changes?since=0")
    assert [e["revision"] for e in everything] == list(range(1, end + 1))  # no gaps
    assert listed(srv, "/changes")["meta"]["pagination"]["total"] == end  # since defaults to 0
    for query, field in (("since=-1", "since"), ("since=abc", "since"), ("since=1.5", "since"),
                         ("perPage=1001", "perPage"), ("perPage=0", "perPage"), ("page=0", "page")):
        bad(srv, "GET", f"/changes?{query}", field=field)


def test_changes_name_the_key(tmp_path: Path) -> None:
    """The actor is the key's name: keys kept in the data folder can carry any name."""
    data = tmp_path / "data"
    data.mkdir()
    key_file = data / "apikeys.json"
    key_file.write_text(json.dumps([{"name": "ops-team", "key": "ops-team-key-0123456789", "scope": "fullAccess"},
                                    {"name": "ci-bot", "key": "ci-bot-key-0123456789", "scope": "fullAccess"}]))
    key_file.chmod(0o600)
    server = Server(data, api_key=None, log_dir=tmp_path / "logs")
    try:
        server.start()
        server.api_key = "ops-team-key-0123456789"
        first = write_ok(server, "PUT", "/users/named-1", {"role": "support"})["revision"]
        second = write_ok(server, "PUT", "/users/named-2", {"role": "support"},
                          apikey="ci-bot-key-0123456789")["revision"]
        entries = {e["revision"]: e for e in all_pages(server, "/changes?since=0")}
        assert entries[first]["actor"] == "ops-team"
        assert entries[second]["actor"] == "ci-bot"
    finally:
        server.stop()
