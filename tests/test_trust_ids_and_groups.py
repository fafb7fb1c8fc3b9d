"""Wrong allows by identity and by an ignored group (issue 10, items 1 and 2), as classes.

- Ids: for arbitrary strings (hypothesis), through a real server, an id in any field, path or
  header is either refused with a 400 naming that field, or decides exactly like its canonical
  (lowercased) form. The oracle is written here, independently of the sidecar's pattern.
- Groups: for every action of the catalogue, a request that names a group is decided with that
  group's facts: a missing group is never an allow, a user banned from the group is allowed
  nothing in it, and an action that takes no group refuses the guid with a 400.
"""
from __future__ import annotations

import string
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.engine import AuthzRequest, Engine, takes_group
from sidecar.errors import BadRequestError
from sidecar.policy import load_policy
from sidecar.state import RuntimeState
from tests.conftest import Server, server_env

ROOT = Path(__file__).resolve().parent.parent
POLICY = load_policy(ROOT / "policies", ROOT / "model.conf")
ID_CHARS = set(string.ascii_letters + string.digits + "-_")
KNOWN = ("alice", "adam", "olivia", "mark", "team", "mod")


def is_id(text: str) -> bool:
    """The oracle: 1-100 characters, each an ASCII letter, digit, dash or underscore."""
    return 1 <= len(text) <= 100 and all(c in ID_CHARS for c in text)


def near_ids() -> st.SearchStrategy[str]:
    """Known ids, mangled the ways attackers try: case, whitespace, control and look-alike characters."""
    junk = st.sampled_from(["\n", "\r\n", " ", "\t", "\x00", "\u212a", "\u0130", "\u00a0", "%0a", "\u2028",
                            "\u017f", "K", "-", "_", ""])
    return st.builds(lambda base, upper, before, after: before + (base.upper() if upper else base) + after,
                     st.sampled_from(KNOWN), st.booleans(), junk, junk)


ID_STRINGS = st.one_of(near_ids(), st.text(max_size=110), st.text(alphabet=sorted(ID_CHARS), min_size=95,
                                                                      max_size=105))


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Any:
    server = Server(tmp_path_factory.mktemp("ids") / "data", workers=2).start()
    server.ok("PUT", "/users/alice", {"role": "support"})        # support denies createGroup and blockUser
    server.ok("PUT", "/users/mark", {"role": "restricted"})
    server.ok("PUT", "/groups/team", {"owner": "olivia"})
    server.ok("PUT", "/groups/team/members/adam", {"scope": "admin"})
    server.ok("PUT", "/groups/team/members/mod", {"scope": "moderator"})
    yield server
    server.stop()


def without_id(decision: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in decision.items() if k not in ("decisionId", "revision")}


def assert_bad_field(response: Any, field: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "ERR_BAD_REQUEST" and field in error["details"], error


# -- the instances of the issue ------------------------------------------------------------------
def test_a_trailing_newline_is_not_another_user(srv: Server) -> None:
    assert srv.authorize("alice", "createGroup")["allowed"] is False
    assert_bad_field(srv.post("/authorize", {"uid": "alice\n", "action": "createGroup"}), "uid")
    assert_bad_field(srv.put("/groups/team2", {"owner": "OLIVIA\n"}), "owner")
    assert srv.get("/groups/team2").status_code == 404
    body = {"uid": "mod", "action": "ban", "guid": "team", "target": "adam\n"}
    assert_bad_field(srv.post("/authorize", body), "target")
    assert srv.authorize("mod", "ban", guid="team", target="adam")["allowed"] is False
    assert_bad_field(srv.put("/users/" + quote("alice\n"), {"role": "default"}), "uid")
    assert_bad_field(srv.post("/groups/team/bannedusers/" + quote("adam\n"), headers={"onBehalfOf": "mod"}), "uid")
    assert_bad_field(srv.post("/groups/team/bannedusers/adam", headers={"onBehalfOf": "mo d"}), "onBehalfOf")
    assert srv.ok("GET", "/groups/team/members")["meta"]["pagination"]["total"] == 3


# -- the class: any string, any place ------------------------------------------------------------
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=ID_STRINGS, field=st.sampled_from(["uid", "target", "guid"]))
def test_any_id_in_authorize_is_refused_or_canonical(srv: Server, raw: str, field: str) -> None:
    body: dict[str, Any] = {"uid": "mod", "action": "kickMembers", "guid": "team", "target": "adam"}
    body[field] = raw
    response = srv.post("/authorize", body)
    if not is_id(raw):
        assert_bad_field(response, field)
        return
    assert response.status_code == 200, response.text
    body[field] = raw.lower()
    assert without_id(response.json()["data"]) == without_id(srv.authorize(**body))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=ID_STRINGS)
def test_any_id_in_a_path_or_header_is_refused_or_canonical(srv: Server, raw: str) -> None:
    # a path parameter: GET /users/{uid} shows the canonical user (or a 400 naming uid)
    if raw and "/" not in raw and raw not in (".", ".."):
        response = srv.get("/users/" + quote(raw, safe=""))
        if is_id(raw):
            assert response.status_code == 200 and response.json()["data"]["uid"] == raw.lower(), response.text
        else:
            assert_bad_field(response, "uid")
    # a header: onBehalfOf decides as the canonical user, or is a 400 naming it (banning the
    # owner is refused whoever asks, so the world stays as it is)
    header_safe = raw.isprintable() and raw.isascii() and raw == raw.strip()
    if header_safe and raw:
        response = srv.post("/groups/team/bannedusers/olivia", headers={"onBehalfOf": raw})
        if is_id(raw):
            expected = srv.authorize(raw.lower(), "ban", guid="team", target="olivia")
            assert response.status_code == 403 and response.json()["error"]["code"] == expected["code"], (raw, response.text)
        else:
            assert_bad_field(response, "onBehalfOf")


def test_the_cli_canonicalises_ids_as_http_does(srv: Server, tmp_path: Path) -> None:
    world = tmp_path / "world.yaml"
    world.write_text("users: {MARK: restricted}\ngroups: {Team: {owner: Olivia, members: {ADAM: admin}}}\n")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "sidecar", "authorize", "--world", str(world), *args],
                              capture_output=True, text=True, timeout=60, env=server_env(None), cwd=ROOT)
    upper, lower = cli("--uid", "MARK", "--action", "createGroup"), cli("--uid", "mark", "--action", "createGroup")
    assert (upper.returncode, upper.stdout) == (lower.returncode, lower.stdout) and lower.returncode == 1
    assert cli("--uid", "adam", "--action", "kickMembers", "--guid", "TEAM", "--target", "Olivia").returncode == 1
    bad = cli("--uid", "mark\n", "--action", "createGroup")
    assert bad.returncode == 2 and "uid" in bad.stderr and "Traceback" not in bad.stderr


# -- groups: every action that names a group looks at it ----------------------------------------
def group_world() -> RuntimeState:
    state = RuntimeState()
    state.apply_all([{"op": "put_group", "guid": "tg", "owner": "own"},
                     {"op": "put_member", "guid": "tg", "uid": "own", "scope": "admin"},
                     {"op": "put_member", "guid": "tg", "uid": "adm", "scope": "admin"},
                     {"op": "put_member", "guid": "tg", "uid": "par", "scope": "participant"},
                     {"op": "ban", "guid": "tg", "uid": "bad"}], 1)
    return state


def facts_for(action: str) -> dict[str, Any]:
    """Context that satisfies every constraint key of the shipped default role."""
    return {"messageType": "text", "messageCategory": "message", "receiverType": "group", "isFriend": True,
            "groupType": "public", "newScope": "participant", "beforeJoin": False, "mimeType": "text/plain",
            "customType": "x"} if action else {}


@pytest.mark.parametrize("action", sorted(POLICY.actions))
def test_every_action_with_a_guid_is_decided_on_the_group(action: str) -> None:
    engine, state = Engine(POLICY), group_world()
    target = "par" if POLICY.actions[action].target_required else None
    for uid, guid in (("bad", "tg"), ("par", "nosuchgroup")):
        request = AuthzRequest(uid, action, guid, target if uid != target else "adm", facts_for(action))
        if not takes_group(POLICY.actions[action]):
            with pytest.raises(BadRequestError) as refused:
                engine.decide(request, state)
            assert "guid" in (refused.value.details or {})
            continue
        decision = engine.decide(request, state)
        if action == "createGroup":  # the one action whose group must not exist yet
            assert decision.allowed is (guid == "nosuchgroup"), decision
            continue
        assert decision.allowed is False, (uid, guid, decision)
        expected = {"ERR_BANNED_GROUPMEMBER" if uid == "bad" else "ERR_GUID_NOT_FOUND"}
        if action == "transferOwnership" and uid == "bad":
            expected.add("ERR_GROUP_NO_CLEARANCE")  # the owner's alone: checked before anything else
        assert decision.code in expected, (uid, guid, decision)


@pytest.mark.parametrize(("uid", "action", "target", "code"), [
    ("bad", "joinGroup", None, "ERR_BANNED_GROUPMEMBER"),
    ("par", "joinGroup", None, "ERR_ALREADY_JOINED"),
    ("own", "joinGroup", None, "ERR_ALREADY_JOINED"),
    ("stranger", "joinGroup", None, None),
    ("adm", "transferOwnership", "par", "ERR_GROUP_NO_CLEARANCE"),
    ("stranger", "transferOwnership", "stranger", "ERR_GROUP_NO_CLEARANCE"),
    ("own", "transferOwnership", "par", None),
    ("par", "massMemberOperate", None, "ERR_GROUP_NO_ADMIN_SCOPE"),
    ("stranger", "massMemberOperate", None, "ERR_GROUP_NOT_JOINED"),
    ("adm", "massMemberOperate", None, None),
    ("par", "deleteGroupMessages", None, "ERR_GROUP_NO_MODERATOR_SCOPE"),
    ("own", "deleteGroupMessages", None, None),
    ("bad", "getGroupDetails", None, "ERR_BANNED_GROUPMEMBER"),
    ("stranger", "getGroupDetails", None, None),
    ("own", "createGroup", None, "ERR_GUID_ALREADY_EXISTS"),
    ("own", "leaveGroup", None, "ERR_GROUP_NO_CLEARANCE"),
    ("par", "leaveGroup", None, None),
])
def test_group_rules(uid: str, action: str, target: str | None, code: str | None) -> None:
    decision = Engine(POLICY).decide(AuthzRequest(uid, action, "tg", target, {"groupType": "public"}),
                                     group_world())
    assert (decision.allowed, decision.code) == (code is None, code), decision
    assert decision.reason


def test_a_guid_on_an_action_that_takes_none_is_a_400_over_http(srv: Server) -> None:
    assert srv.authorize("alice", "listUsers")["allowed"] is True
    assert_bad_field(srv.post("/authorize", {"uid": "alice", "action": "listUsers", "guid": "team"}), "guid")
    # and a banned user's joinGroup, refused by the write, is refused by /authorize alike
    srv.ok("POST", "/groups/team/bannedusers/eve")
    answer = srv.authorize("eve", "joinGroup", guid="team", context={"groupType": "public"})
    assert (answer["allowed"], answer["code"]) == (False, "ERR_BANNED_GROUPMEMBER")
    response = srv.put("/groups/team/members/eve", {"scope": "participant"}, headers={"onBehalfOf": "eve"})
    assert response.status_code == 403 and response.json()["error"]["code"] == "ERR_BANNED_GROUPMEMBER"


def test_no_pattern_anchors_with_a_dollar() -> None:
    """The class of the trailing-newline bug: `$` matches before a final newline. Every pattern in
    sidecar/ is used with fullmatch (or anchors with \\Z), never with ^...$ and match."""
    import ast
    offenders = []
    for path in sorted((ROOT / "sidecar").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in
                    ("compile", "match", "search", "fullmatch") and node.args
                    and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, (str, bytes))):
                pattern = node.args[0].value
                text = pattern.decode("latin-1") if isinstance(pattern, bytes) else pattern
                if text.endswith("$") and not text.endswith("\\$"):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {text!r}")
    assert not offenders, offenders


@pytest.mark.parametrize("action", ["transferOwnership", "massMemberOperate", "deleteGroupMessages"])
def test_an_action_of_one_group_needs_its_guid(action: str) -> None:
    """Without a guid these would be answered by the role layer alone: a 400 instead."""
    with pytest.raises(BadRequestError) as refused:
        Engine(POLICY).decide(AuthzRequest("own", action), group_world())
    assert "guid" in (refused.value.details or {})


# -- constraint conditions and boolean facts fail closed ------------------------------------------
WHEN_KEYS = sorted(k for k, d in POLICY.role_keys.items() if d.when)
JUNK = ["Custom", "USER", "IMAGE", "x", 1, True, 0.5]


@pytest.mark.parametrize("key", WHEN_KEYS)
def test_a_condition_fact_outside_its_vocabulary_never_skips_the_constraint(key: str) -> None:
    """A `when` condition skips its constraint only for a value the catalogue knows for that fact
    (found by an outsider: messageCategory "Custom" skipped allowedCustomTypes)."""
    defn = POLICY.role_keys[key]
    assert defn.fact is not None
    restrictive = ["nobody"] if defn.type == "rolesStringArray" else ["only-this"]
    state = RuntimeState()
    state.apply_all([{"op": "put_role", "role": "tight", "record": {"role": "tight", "name": "T", "createdAt": 0}},
                     {"op": "set_role_permissions", "role": "tight", "values": {key: restrictive}},
                     {"op": "put_user", "uid": "actor", "role": "tight"}], 1)
    engine = Engine(POLICY)
    main = {} if defn.fact.startswith("target.") else {defn.fact.removeprefix("context."): "zzz"}
    for fact, values in defn.when.items():
        name = fact.removeprefix("context.")
        applies = engine.decide(AuthzRequest("actor", defn.action, None, "someone", {**main, name: values[0]}), state)
        assert applies.allowed is False, applies  # the constraint applies: the baseline denies
        for junk in JUNK:
            decision = engine.decide(AuthzRequest("actor", defn.action, None, "someone", {**main, name: junk}), state)
            assert decision.allowed is False, (fact, junk, decision)


@pytest.mark.parametrize("value", ["true", "True", 1, "1", "yes", "false", 0])
def test_a_deny_on_a_true_fact_passes_on_exactly_false(value: Any) -> None:
    """listMessages.historyBeforeJoin = deny: only beforeJoin false passes (an outsider's "true"
    string was allowed)."""
    state = group_world()
    state.apply_all([{"op": "set_scope_permissions", "guid": "tg", "scope": "participant",
                      "values": {"listMessages.historyBeforeJoin": "deny"}}], 2)
    engine = Engine(POLICY)
    ask = lambda before: engine.decide(AuthzRequest("par", "listMessages", "tg", None,  # noqa: E731
                                                    {"beforeJoin": before}), state)
    assert ask(False).allowed is True and ask(True).allowed is False
    assert ask(value).allowed is False, ask(value)


@pytest.mark.parametrize(("method", "path", "body"), [
    ("PUT", "/groups/team/scopes/participant/permissions", {"permissions": {"kickMembers": "allow"}}),
    ("PUT", "/users/alice", {"role": "default"}),
    ("DELETE", "/roles/support/restrictedfeatures", {"allowAll": True}),
    ("POST", "/authorize", {"uid": "alice", "action": "listUsers"}),
    ("POST", "/roles", {"role": "sneaky", "name": "Sneaky"}),
])
def test_on_behalf_of_is_refused_where_it_would_be_ignored(srv: Server, method: str, path: str,
                                                           body: dict[str, Any]) -> None:
    """Found by an outside attack: a participant's onBehalfOf on a route that does not decide as
    the user was ignored, and the write made with the key's full rights."""
    before = srv.revision()
    response = srv.request(method, path, json=body, headers={"onBehalfOf": "mod"})
    assert_bad_field(response, "onBehalfOf")
    assert srv.revision() == before
