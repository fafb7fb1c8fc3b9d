"""The OpenAPI document (sidecar/api/openapi.py) is true to the app.

(a) every rule of app.url_map is documented with its methods, and nothing else is;
(b) real responses of a live server, for a representative request per route (success and
    errors), match the document: status documented, content type, schema;
(c) every route that needs a key refuses a missing key, a wrong key and (off /authorize) an
    authorize-only key, so that a new route cannot be left open; no route is both open and
    undocumented (Flask's /static/<path> once was: files of the working folder, no key);
(d) the limits in the document are the app's settings, and every flag and variable it names exists.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import requests
from conftest import TEST_API_KEY, Server, unique
from flask import Flask

from sidecar import cli
from sidecar.api import create_app
from sidecar.api.auth import AUTHORIZE_ENDPOINTS, OPEN_ENDPOINTS
from sidecar.api.openapi import METHODS, build_document
from sidecar.compose import build_sidecar
from sidecar.config import Settings

AUTHORIZE_KEY = "test-authorize-only-key-0123456789"
AUTOMATIC_METHODS = {"HEAD", "OPTIONS"}  # Flask adds these to every rule
SERVER_ENV = {"CHATAUTHZ_AUTHORIZE_KEY": AUTHORIZE_KEY, "CHATAUTHZ_REVISION_WAIT_S": "0.2"}
ENVELOPE_EXEMPT = {("get", "/health/ready", 503)}  # readiness says why in {"data": ...}, by design
# The document the live server below serves: built from its settings, as create_app does.
DOCUMENT = build_document(Settings.from_env(SERVER_ENV))


# -- the document, as a validator -------------------------------------------------------------------
def openapi_path(rule: str) -> str:
    """/roles/<role> -> /roles/{role}; /files/<path:name> -> /files/{name}."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def operation(method: str, template: str) -> dict[str, Any]:
    item = DOCUMENT["paths"].get(template)
    assert item is not None, f"{template} is not in the document"
    assert method.lower() in item, f"{method.upper()} {template} is not in the document"
    return item[method.lower()]  # type: ignore[no-any-return]


_VALIDATORS: dict[str, Any] = {}


def validator(schema: dict[str, Any]) -> Any:
    """A Draft 2020-12 validator of `schema`, its $refs resolved in the document's components."""
    key = json.dumps(schema, sort_keys=True)
    if key not in _VALIDATORS:
        _VALIDATORS[key] = jsonschema_rs.Draft202012Validator({**schema, "components": DOCUMENT["components"]})
    return _VALIDATORS[key]


def assert_matches(method: str, template: str, response: requests.Response) -> None:
    """The response's status is documented for the operation, its content type too, and the body
    matches that status's schema; an error (4xx/5xx) is the error envelope."""
    where = f"{method.upper()} {template} -> {response.status_code} {response.text[:500]}"
    responses = operation(method, template)["responses"]
    status = str(response.status_code)
    assert status in responses, f"undocumented status: {where}"
    documented = responses[status].get("content", {})
    media = response.headers.get("Content-Type", "").split(";")[0].strip()
    assert media in documented, f"content type {media!r} not in {list(documented)}: {where}"
    if media != "application/json":
        return
    body = response.json()
    errors = [f"{e.instance_path}: {e.message}" for e in validator(documented[media]["schema"]).iter_errors(body)]
    assert not errors, f"does not match the document: {where}\n" + "\n".join(errors[:10])
    if response.status_code >= 400 and (method.lower(), template, response.status_code) not in ENVELOPE_EXEMPT:
        assert validator({"$ref": "#/components/schemas/Error"}).is_valid(body), f"not an error envelope: {where}"


# -- fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    """The app in this process (no threads), for its URL map; built in a working folder that has a
    static/ folder, where Flask's default would add its /static/<path:filename> rule."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("urlmap"), api_key=TEST_API_KEY, policy_watch_s=0)
    core = build_sidecar(settings, start_threads=False)
    cwd = tmp_path_factory.mktemp("cwd")
    (cwd / "static").mkdir()
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        app = create_app(settings, sidecar=core)
    finally:
        os.chdir(previous)
    yield app
    core.store.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("openapi")
    srv = Server(base / "data", workers=1, log_dir=base / "logs", extra_env=SERVER_ENV)
    try:
        yield srv.start()
    finally:
        srv.stop()


def rules(app: Flask) -> Iterator[tuple[str, str, set[str]]]:
    """(endpoint, OpenAPI path, methods) of every rule, none exempt."""
    for rule in app.url_map.iter_rules():
        yield rule.endpoint, openapi_path(rule.rule), set(rule.methods or ())


# -- (a) every route is documented -----------------------------------------------------------------
def test_every_route_is_documented_with_its_methods(app: Flask) -> None:
    in_app = {(path, method.lower()) for _, path, methods in rules(app) for method in methods - AUTOMATIC_METHODS}
    in_document = {(path, method) for path, item in DOCUMENT["paths"].items() for method in METHODS if method in item}
    assert sorted(in_app - in_document) == [], "routes missing from sidecar/api/openapi.py"
    assert sorted(in_document - in_app) == [], "the document names routes the app does not have"


def test_document_declares_each_path_parameter(app: Flask) -> None:
    for _, path, _methods in rules(app):
        item = DOCUMENT["paths"][path]
        names = set(re.findall(r"{([^}]+)}", path))
        for method in METHODS:
            if method in item:
                declared = {p["name"] for p in [*item.get("parameters", []), *item[method].get("parameters", [])]
                            if p["in"] == "path"}
                assert declared == names, (method, path, declared, names)


def test_no_route_is_open_and_undocumented(app: Flask) -> None:
    """Each rule needs a key, or is in the document (so the tests below call it): nothing is
    served behind everyone's back."""
    open_and_undocumented = sorted(f"{sorted(methods - AUTOMATIC_METHODS)} {path} ({endpoint})"
                                   for endpoint, path, methods in rules(app)
                                   if endpoint in OPEN_ENDPOINTS and path not in DOCUMENT["paths"])
    assert open_and_undocumented == []


def test_open_routes_are_exactly_the_documented_open_ones(app: Flask) -> None:
    open_in_app = {path for endpoint, path, _ in rules(app) if endpoint in OPEN_ENDPOINTS}
    open_in_document = {path for path, item in DOCUMENT["paths"].items()
                        if all(item[m].get("security") == [] for m in METHODS if m in item)}
    assert open_in_app == open_in_document


def test_document_schemas_are_valid_json_schema() -> None:
    schemas = list(DOCUMENT["components"]["schemas"].values())
    for item in DOCUMENT["paths"].values():
        for method in METHODS:
            if method in item:
                op = item[method]
                schemas += [c["schema"] for c in op.get("requestBody", {}).get("content", {}).values()]
                schemas += [c["schema"] for r in op["responses"].values() for c in r.get("content", {}).values()]
                schemas += [p["schema"] for p in [*item.get("parameters", []), *op.get("parameters", [])]]
    for schema in schemas:
        assert jsonschema_rs.meta.is_valid(schema), schema
        validator(schema)  # its $refs resolve
    assert DOCUMENT["openapi"].startswith("3.1")


def test_served_document_and_docs_page(live: Server) -> None:
    response = live.get("/openapi.json", apikey=None)
    assert_matches("get", "/openapi.json", response)
    assert response.json() == json.loads(json.dumps(DOCUMENT))
    page = live.get("/docs", apikey=None)
    assert_matches("get", "/docs", page)
    text = page.text
    for path in DOCUMENT["paths"]:
        assert f"<code>{path}</code>" in text, path
    # self-contained: no script, stylesheet, image or font from anywhere
    assert not re.search(r"<script|<link|<img|<iframe|@import|url\(|src=", text, re.I)
    assert not re.search(r"https?://", text), re.search(r".{40}https?://.{40}", text)


# -- (b) real responses match the document ---------------------------------------------------------
class Recorder:
    """Sends a request to the live server by operation (template + path values) and checks it."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.seen: dict[tuple[str, str], set[int]] = {}

    def __call__(self, method: str, template: str, expect: int, path: dict[str, str] | None = None,
                 **kwargs: Any) -> requests.Response:
        url = template.format(**(path or {}))
        response = self.server.request(method.upper(), url, **kwargs)
        assert response.status_code == expect, f"{method.upper()} {url} -> {response.status_code} {response.text}"
        assert_matches(method, template, response)
        self.seen.setdefault((method.lower(), template), set()).add(response.status_code)
        return response


def test_real_responses_match_the_document(live: Server) -> None:
    call = Recorder(live)
    role, uid, owner, member, mod, outsider, guid = (unique(p) for p in ("role", "u", "own", "mem", "mod", "out", "grp"))
    r = {"role": role}

    # -- roles
    call("post", "/roles", 200, json={"role": role.upper(), "name": "Role", "description": "d",
                                      "metadata": {"team": "x"}, "settings": {"listUsers": "all"}})
    call("post", "/roles", 409, json={"role": role, "name": "Again"})
    call("post", "/roles", 400, json={"role": "bad id!", "name": "x"})
    call("post", "/roles", 400, json={"role": unique("role"), "name": "x", "surprise": 1})
    call("post", "/roles", 400, data="role=x", headers={"Content-Type": "text/plain"})
    call("post", "/roles", 413, data=b"{" + b" " * (1024 * 1024 + 10) + b"}",
         headers={"Content-Type": "application/json"})
    call("get", "/roles", 200, params={"perPage": 2, "page": 2})
    call("get", "/roles", 400, params={"perPage": 0})
    call("get", "/roles/{role}", 200, r)
    call("get", "/roles/{role}", 200, {"role": "default"})
    call("get", "/roles/{role}", 404, {"role": unique("nope")})
    call("get", "/roles/{role}", 400, {"role": "bad!id"})
    call("put", "/roles/{role}", 200, r, json={"name": "Renamed", "unset": ["metadata"]})
    call("put", "/roles/{role}", 400, r, json={"unset": ["name"]})
    call("put", "/roles/{role}", 404, {"role": unique("nope")}, json={"name": "x"})
    call("get", "/roles/{role}/permissions", 200, r, params={"perPage": 5})
    call("get", "/roles/{role}/permissions", 404, {"role": unique("nope")})
    call("put", "/roles/{role}/permissions", 200, r, json={"permissions": {"sendMessage": "deny",
                                                                           "createGroup.allowedGroupTypes": ["public"]}})
    call("put", "/roles/{role}/permissions", 400, r, json={"permissions": {"noSuchKey": 1}})
    call("delete", "/roles/{role}/permissions/{permission}", 200, {**r, "permission": "sendMessage"})
    call("delete", "/roles/{role}/permissions/{permission}", 404, {**r, "permission": "sendMessage"})
    call("post", "/roles/{role}/restrictedfeatures", 200, r, json={"featuresToRestrict": ["u.joinGroup", "ban"]})
    call("post", "/roles/{role}/restrictedfeatures", 400, r, json={"featuresToRestrict": ["u.noSuchFeature"]})
    call("post", "/roles/{role}/restrictedfeatures", 400, {"role": "default"}, json={"featuresToRestrict": ["ban"]})
    call("get", "/roles/{role}/restrictedfeatures", 200, r)
    call("delete", "/roles/{role}/restrictedfeatures", 200, r, json={"featuresToAllow": ["u.ban"]})
    call("delete", "/roles/{role}/restrictedfeatures", 200, r, json={"allowAll": True})
    call("delete", "/roles/{role}/restrictedfeatures", 400, r, json={})

    # -- users
    call("put", "/users/{uid}", 200, {"uid": uid}, json={"role": role})
    call("put", "/users/{uid}", 404, {"uid": uid}, json={"role": unique("nope")})
    call("put", "/users/{uid}", 400, {"uid": uid}, json={"role": role, "name": "x"})
    call("get", "/users/{uid}", 200, {"uid": uid})
    call("get", "/users/{uid}", 400, {"uid": "x" * 101})
    deleted = call("delete", "/roles/{role}", 200, r).json()
    assert deleted["data"]["usersMovedToDefault"] == 1
    call("delete", "/roles/{role}", 403, {"role": "default"})
    call("delete", "/roles/{role}", 403, {"role": "support"})
    call("delete", "/roles/{role}", 404, r)
    call("delete", "/users/{uid}", 200, {"uid": uid})

    # -- groups, members, bans, scope permissions
    g = {"guid": guid}
    call("put", "/groups/{guid}", 200, g, json={"owner": owner})
    call("put", "/groups/{guid}", 400, g, json={"owner": "no way"})
    call("get", "/groups/{guid}", 200, g)
    call("get", "/groups/{guid}", 404, {"guid": unique("nope")})
    added = call("post", "/groups/{guid}/members", 200, g, json={
        "participants": [uid, "bad!"], "moderators": [mod, member], "usersToBan": [outsider]}).json()
    assert added["data"]["participants"]["bad!"]["success"] is False
    call("post", "/groups/{guid}/members", 400, g, json={"participants": [f"u{i}" for i in range(26)]})
    call("post", "/groups/{guid}/members", 404, {"guid": unique("nope")}, json={"participants": [uid]})
    call("get", "/groups/{guid}/members", 200, g, params={"scopes": "participant,moderator", "perPage": 1})
    call("get", "/groups/{guid}/members", 400, g, params={"scopes": "owner"})
    call("put", "/groups/{guid}/members/{uid}", 403, {**g, "uid": member}, json={"scope": "participant"},
         headers={"onBehalfOf": uid})
    call("put", "/groups/{guid}/members/{uid}", 200, {**g, "uid": member}, json={"scope": "participant"})
    call("put", "/groups/{guid}/members/{uid}", 400, {**g, "uid": member}, json={"scope": "participant"})
    call("put", "/groups/{guid}/members/{uid}", 400, {**g, "uid": member}, json={"scope": "owner"})
    call("put", "/groups/{guid}/members/{uid}", 403, {**g, "uid": owner}, json={"scope": "participant"})
    call("delete", "/groups/{guid}/members/{uid}", 403, {**g, "uid": mod}, headers={"onBehalfOf": member})
    call("delete", "/groups/{guid}/members/{uid}", 200, {**g, "uid": member}, headers={"onBehalfOf": mod})
    call("delete", "/groups/{guid}/members/{uid}", 400, {**g, "uid": member})
    call("post", "/groups/{guid}/bannedusers/{uid}", 200, {**g, "uid": member})
    call("post", "/groups/{guid}/bannedusers/{uid}", 400, {**g, "uid": member})
    call("post", "/groups/{guid}/bannedusers/{uid}", 403, {**g, "uid": owner})
    call("get", "/groups/{guid}/bannedusers", 200, g)
    call("get", "/groups/{guid}/bannedusers", 404, {"guid": unique("nope")})
    call("delete", "/groups/{guid}/bannedusers/{uid}", 200, {**g, "uid": member})
    call("delete", "/groups/{guid}/bannedusers/{uid}", 400, {**g, "uid": member})
    s = {**g, "scope": "moderator"}
    call("get", "/groups/{guid}/scopes/{scope}/permissions", 200, s, params={"perPage": 3})
    call("get", "/groups/{guid}/scopes/{scope}/permissions", 404, {**g, "scope": "owner"})
    call("put", "/groups/{guid}/scopes/{scope}/permissions", 200, s, json={"permissions": {"kickMembers": "deny"}})
    call("put", "/groups/{guid}/scopes/{scope}/permissions", 400, s, json={"permissions": {}})
    call("delete", "/groups/{guid}/scopes/{scope}/permissions/{permission}", 200, {**s, "permission": "kickMembers"})
    call("delete", "/groups/{guid}/scopes/{scope}/permissions/{permission}", 404, {**s, "permission": "kickMembers"})
    # -- capabilities and list questions, while the group exists
    caps = call("post", "/authorize/capabilities", 200, json={"uid": mod, "guid": guid}).json()["data"]
    assert caps["scope"] == "moderator" and caps["actions"]["kickMembers"]["targets"]["actsOn"] == ["participant"]
    call("post", "/authorize/capabilities", 200, json={"uid": uid}, apikey=AUTHORIZE_KEY)
    call("post", "/authorize/capabilities", 400, json={"uid": "bad id"})
    listed = call("post", "/authorize/groups", 200, json={"uid": mod, "action": "sendMessage"}).json()["data"]
    assert listed["groups"] == [{"guid": guid, "scope": "moderator"}]
    call("post", "/authorize/groups", 400, json={"uid": mod, "action": "createGroup"})
    who = call("post", "/authorize/members", 200, json={"guid": guid, "action": "kickMembers", "target": uid,
                                                         "limit": 10}).json()["data"]
    assert {m["uid"] for m in who["members"]} >= {owner, mod}
    call("post", "/authorize/members", 404, json={"guid": unique("nope"), "action": "sendMessage"})
    call("delete", "/groups/{guid}", 403, g, headers={"onBehalfOf": mod})
    call("delete", "/groups/{guid}", 400, g, headers={"onBehalfOf": "bad id"})
    call("delete", "/groups/{guid}", 200, g)
    call("delete", "/groups/{guid}", 404, g)

    # -- decisions
    call("post", "/authorize", 200, json={"uid": uid, "action": "sendMessage", "context": {"messageType": "text"}})
    denied = call("post", "/authorize", 200, json={"uid": uid, "action": "sendMessage", "guid": guid}).json()
    assert denied["data"]["allowed"] is False
    call("post", "/authorize", 200, json={"uid": uid, "action": "sendMessage"}, apikey=AUTHORIZE_KEY)
    call("post", "/authorize", 400, json={"uid": uid, "action": "noSuchAction"})
    call("post", "/authorize", 400, json={"uid": uid, "action": "sendMessage", "surprise": True})
    call("post", "/authorize", 400, data="{", headers={"Content-Type": "application/json"})
    call("post", "/authorize", 400, data="uid=x", headers={"Content-Type": "text/plain"})
    call("post", "/authorize", 401, json={"uid": uid, "action": "sendMessage"}, apikey=None)
    call("post", "/authorize", 401, json={"uid": uid, "action": "sendMessage"}, apikey="wrong")
    call("post", "/authorize", 503, json={"uid": uid, "action": "sendMessage", "atLeastRevision": 10**9})
    batch = call("post", "/authorize/batch", 200, json={"checks": [
        {"uid": uid, "action": "sendMessage"}, {"uid": uid, "action": "noSuchAction"}, "not an object"]}).json()
    assert [("error" in result) for result in batch["data"]["results"]] == [False, True, True]
    call("post", "/authorize/batch", 400, json={"checks": []})

    # -- operations
    call("get", "/changes", 200, params={"since": 1, "perPage": 3})
    call("get", "/changes", 400, params={"since": "-1"})
    call("get", "/health/live", 200, apikey=None)
    call("get", "/health/ready", 200, apikey=None)
    call("get", "/metrics", 200, apikey=None)
    call("get", "/openapi.json", 200, apikey=None)
    call("get", "/docs", 200, apikey=None)
    call("get", "/roles", 403, apikey=AUTHORIZE_KEY)
    call("get", "/roles", 401, apikey="wrong")

    # every documented operation was shown a success above
    documented = {(m, p) for p, item in DOCUMENT["paths"].items() for m in METHODS if m in item}
    no_success = sorted(op for op in documented if not any(200 <= s < 300 for s in call.seen.get(op, ())))
    assert no_success == [], "add a representative request for these operations"


def test_unknown_route_and_wrong_method_use_the_envelope(live: Server) -> None:
    for method, path, status, code in [("GET", "/nope", 404, "ERR_API_NOT_FOUND"),
                                       ("GET", "/authorize", 405, "ERR_METHOD_NOT_ALLOWED"),
                                       ("PATCH", "/roles", 405, "ERR_METHOD_NOT_ALLOWED")]:
        response = live.request(method, path)
        assert response.status_code == status, response.text
        assert response.json()["error"]["code"] == code
        assert validator({"$ref": "#/components/schemas/Error"}).is_valid(response.json())


# -- (c) no route is left open ---------------------------------------------------------------------
def filled(path: str) -> str:
    """A concrete URL for an OpenAPI path: each parameter a valid value."""
    values = {"scope": "participant", "permission": "sendMessage"}
    return re.sub(r"{([^}]+)}", lambda m: values.get(m.group(1), f"{m.group(1)}-keytest"), path)


def test_every_keyed_route_refuses_a_missing_or_wrong_key(app: Flask, live: Server) -> None:
    before = live.revision()
    checked = 0
    for endpoint, path, methods in rules(app):
        if endpoint in OPEN_ENDPOINTS:
            continue
        for method in sorted(methods):
            url = filled(path)
            keys = [(None, 401, "AUTH_ERR_EMPTY_APIKEY"), ("", 401, "AUTH_ERR_EMPTY_APIKEY"),
                    ("wrong-" + TEST_API_KEY, 401, "AUTH_ERR_APIKEY_NOT_FOUND")]
            if endpoint not in AUTHORIZE_ENDPOINTS:
                keys.append((AUTHORIZE_KEY, 403, "AUTH_ERR_NO_ACCESS"))
            for key, status, code in keys:
                response = live.request(method, url, apikey=key, json={})
                where = f"{method} {url} with key {key!r}: {response.status_code} {response.text[:200]}"
                assert response.status_code == status, where
                if method != "HEAD":
                    assert response.json() == {"error": {"code": code, "message": response.json()["error"]["message"]}}, where
                    if method != "OPTIONS":
                        assert_matches(method, path, response)
                checked += 1
    assert checked > 100
    assert live.revision() == before, "a refused request wrote something"


def test_open_routes_answer_without_a_key(app: Flask, live: Server) -> None:
    for endpoint, path, methods in rules(app):
        if endpoint in OPEN_ENDPOINTS:
            for method in methods - AUTOMATIC_METHODS:
                response = live.request(method, filled(path), apikey=None)
                assert response.status_code in (200, 503), (method, path, response.status_code)
                assert_matches(method, path, response)



@pytest.mark.integration  # starts a process
def test_no_static_files_from_the_working_folder(tmp_path: Path) -> None:
    """A real server started in a folder that has static/secret.txt does not serve it."""
    logs = tmp_path / "logs"
    (logs / "static").mkdir(parents=True)
    (logs / "static" / "secret.txt").write_text("not for you\n")
    srv = Server(tmp_path / "data", workers=1, log_dir=logs)  # the server's working folder is `logs`
    try:
        srv.start()
        for path in ("/static/secret.txt", "/static/../static/secret.txt", "/static/"):
            response = srv.request("GET", path, apikey=None)
            assert response.status_code == 404, (path, response.status_code, response.text[:200])
            assert "not for you" not in response.text
        assert srv.request("GET", "/static/secret.txt").json()["error"]["code"] == "ERR_API_NOT_FOUND"
    finally:
        srv.stop()


# -- (d) the limits are the settings' --------------------------------------------------------------
def served_document(tmp_path: Path, **settings: Any) -> dict[str, Any]:
    """GET /openapi.json of an in-process app built with `settings`."""
    config = Settings(data_dir=tmp_path / "data", api_key=TEST_API_KEY, policy_watch_s=0, **settings)
    core = build_sidecar(config, start_threads=False)
    try:
        response = create_app(config, sidecar=core).test_client().get("/openapi.json")
        assert response.status_code == 200, response.text
        return response.get_json()  # type: ignore[no-any-return]
    finally:
        core.store.close()


def test_the_document_states_the_apps_limits(tmp_path: Path) -> None:
    document = served_document(tmp_path, max_batch=7, max_roles=3, max_body_bytes=4096, revision_wait_s=0.5)
    assert document == json.loads(json.dumps(build_document(Settings(max_batch=7, max_roles=3, max_body_bytes=4096,
                                                                      revision_wait_s=0.5))))
    batch = document["paths"]["/authorize/batch"]["post"]
    assert batch["requestBody"]["content"]["application/json"]["schema"]["properties"]["checks"]["maxItems"] == 7
    assert "At most 7 checks (CHATAUTHZ_MAX_BATCH)" in batch["description"]
    assert "At most 3 roles (CHATAUTHZ_MAX_ROLES)" in document["paths"]["/roles"]["post"]["description"]
    assert "at most 4096 bytes (CHATAUTHZ_MAX_BODY_BYTES)" in document["info"]["description"]
    wait = document["components"]["schemas"]["AuthorizeRequest"]["properties"]["atLeastRevision"]["description"]
    assert "at most 0.5 s" in wait
    default = served_document(tmp_path / "default")
    assert "At most 1000 checks" in default["paths"]["/authorize/batch"]["post"]["description"]


def test_the_app_enforces_the_batch_and_body_limits_it_documents(tmp_path: Path) -> None:
    config = Settings(data_dir=tmp_path / "data", api_key=TEST_API_KEY, policy_watch_s=0, max_batch=2,
                      max_body_bytes=2048)
    core = build_sidecar(config, start_threads=False)
    try:
        client = create_app(config, sidecar=core).test_client()
        headers = {"apikey": TEST_API_KEY}
        check = {"uid": "alice", "action": "createGroup"}
        assert client.post("/authorize/batch", json={"checks": [check] * 2}, headers=headers).status_code == 200
        refused = client.post("/authorize/batch", json={"checks": [check] * 3}, headers=headers)
        assert refused.status_code == 400, refused.text
        too_big = client.post("/roles", data=b"{" + b" " * 2048 + b"}", headers={**headers,
                              "Content-Type": "application/json"})
        assert (too_big.status_code, too_big.get_json()["error"]["code"]) == (413, "ERR_PAYLOAD_TOO_LARGE")
    finally:
        core.store.close()


def test_every_flag_and_variable_the_document_names_exists(capsys: pytest.CaptureFixture[str]) -> None:
    text = json.dumps(DOCUMENT)
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    flags = set(re.findall(r"--[a-z][a-z-]*", capsys.readouterr().out))
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", text))
    assert named - flags == set(), f"the document names flags `chatauthz serve` does not have: {named - flags}"
    variables = {"CHATAUTHZ_" + field.upper() for field in Settings.__dataclass_fields__}
    named_variables = set(re.findall(r"CHATAUTHZ_[A-Z_]+", text))
    assert named_variables, "the document names no setting"
    assert named_variables - variables == set(), f"unknown settings in the document: {named_variables - variables}"
