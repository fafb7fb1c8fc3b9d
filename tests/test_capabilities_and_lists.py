"""Capabilities and list questions answer exactly what /authorize answers, one request at a time.

Differential, over seeded random worlds (tests/test_differential_authorize_write.world_ops) on
a Sidecar with the embedded store:
- capabilities(uid, guid?, target?, context?) has, for every action of the catalogue, the
  decision (allowed, code, reason, layer, role, scope) Sidecar.decide gives for that action, or
  the same 400 (an action that takes no group is asked app-wide, without the guid);
- its target scopes agree with deciding each real target: an allowed action on a member means
  that member's scope is in actsOn (and, for changeScope and addMembers, the new scope in
  grants); addMembers of a non-member outsider is allowed exactly when its scope is granted;
- groups_where(uid, action) is every existing group that /authorize allows, in guid order, and
  members_who(guid, action, target?) every member (and the owner) it allows, in uid order; both
  page by cursor without losing or repeating one.
Then one real server: POST /authorize/capabilities against one POST /authorize per action.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from conftest import Server
from test_differential_authorize_write import world_ops

from sidecar.core import Sidecar
from sidecar.engine import AuthzRequest, takes_group
from sidecar.errors import ChatAuthzError
from sidecar.policy import load_policy
from sidecar.stores.sqlite import SQLiteStore

ROOT = Path(__file__).resolve().parent.parent
POLICY = load_policy(ROOT / "policies", ROOT / "model.conf")
ACTIONS = sorted(POLICY.actions)
FIELDS = ("allowed", "code", "reason", "layer", "role", "scope")
CONTEXTS: list[dict[str, Any]] = [{}, {"messageType": "image"}, {"newScope": "moderator"}, {"newScope": "admin"}]


def world(tmp_path: Path, seed: int) -> tuple[Sidecar, list[str], list[str]]:
    ops, uids, guids = world_ops(random.Random(seed))
    core = Sidecar(POLICY, SQLiteStore(tmp_path / f"w{seed}.db"))
    core.write(lambda tx: (ops, None), "test")
    return core, uids, guids


def answer(core: Sidecar, request: AuthzRequest) -> dict[str, Any]:
    try:
        body = core.decide(request)
    except ChatAuthzError as exc:
        return {"error": exc.to_dict()}
    return {k: body[k] for k in FIELDS if k in body}


@pytest.mark.parametrize("seed", range(6))
def test_capabilities_are_one_decision_per_action(tmp_path: Path, seed: int) -> None:
    core, uids, guids = world(tmp_path, seed)
    rng = random.Random(seed)
    state = core.state
    checked = allowed = 0
    for _ in range(30):
        uid, guid = rng.choice(uids), rng.choice([None, *guids])
        target = None if rng.random() < 0.5 else rng.choice(uids)  # without a target: the target scopes
        context = rng.choice(CONTEXTS)
        caps = core.capabilities(uid, guid, target, context)
        assert set(caps["actions"]) == set(ACTIONS)
        assert caps["revision"] == state.revision and caps["role"] == state.users.get(uid, "default")
        for action in ACTIONS:
            entry = caps["actions"][action]
            where = guid if action in core.engine.group_actions else None  # app-wide actions: app-wide
            expected = answer(core, AuthzRequest(uid, action, where, target, context))
            shown = {k: entry[k] for k in (*FIELDS, "error") if k in entry}
            assert shown == expected, (uid, action, guid, target, context)
            checked += 1
            allowed += bool(entry.get("allowed"))
            if "targets" in entry and guid is not None:
                agree_with_targets(core, uid, action, guid, context, entry["targets"], uids)
    assert checked >= 500 and allowed > 50, (checked, allowed)


def agree_with_targets(core: Sidecar, uid: str, action: str, guid: str, context: dict[str, Any],
                       targets: dict[str, list[str]], uids: list[str]) -> None:
    state = core.state
    for target in uids:
        if target == uid or state.owners.get(guid) == target:
            continue
        target_scope = state.scope_of(guid, target)
        if action == "addMembers":
            if target_scope is None and not state.is_banned(guid, target):
                for new in POLICY.scopes:
                    decided = core.decide(AuthzRequest(uid, action, guid, target, {**context, "newScope": new}))
                    assert decided["allowed"] is (new in targets["grants"]), (uid, guid, target, new, targets)
            continue
        if target_scope is None or action == "unban":  # unban: a member is never banned, refused on that
            continue
        facts = context if action != "changeScope" else {**context, "newScope": context.get("newScope", "moderator")}
        try:
            decided = core.decide(AuthzRequest(uid, action, guid, target, facts))
        except ChatAuthzError:
            continue
        may = target_scope in targets["actsOn"]
        if action == "changeScope":
            may = may and facts["newScope"] in targets["grants"] and facts["newScope"] != target_scope
        assert decided["allowed"] is may, (uid, action, guid, target, facts, decided, targets)


@pytest.mark.parametrize("seed", range(6))
def test_list_questions_equal_filtering_with_authorize(tmp_path: Path, seed: int) -> None:
    core, uids, guids = world(tmp_path, seed)
    rng = random.Random(100 + seed)
    state = core.state
    existing = sorted(state.owners)
    nonempty = 0
    group_actions = [a for a in ACTIONS if a != "createGroup" and not POLICY.actions[a].target_required]
    for _ in range(25):
        uid, action = rng.choice(uids), rng.choice(group_actions)
        context = rng.choice(CONTEXTS[:2])
        try:
            listed = core.groups_where(uid, action, context)
        except ChatAuthzError as exc:  # the action takes no group: /authorize refuses a guid the same way
            with pytest.raises(ChatAuthzError) as info:
                core.decide(AuthzRequest(uid, action, existing[0] if existing else "g0", None, context))
            assert info.value.code == exc.code
            continue
        expected = [g for g in existing if answer(core, AuthzRequest(uid, action, g, None, context)).get("allowed")]
        assert [item["guid"] for item in listed["groups"]] == expected, (uid, action)
        assert paged(lambda cursor, uid=uid, action=action, context=context: core.groups_where(
            uid, action, context, cursor=cursor, limit=1), "groups", "guid") == expected
        nonempty += bool(expected)
    for guid in existing:
        for action in ("sendMessage", "kickMembers", "editGroup", "leaveGroup"):
            target = rng.choice(uids) if POLICY.actions[action].target_required else None
            listed = core.members_who(guid, action, target)
            candidates = sorted({*state.members.get(guid, ()), state.owners[guid]})
            expected = [u for u in candidates
                        if answer(core, AuthzRequest(u, action, guid, target)).get("allowed")]
            assert [item["uid"] for item in listed["members"]] == expected, (guid, action, target)
            assert paged(lambda cursor, guid=guid, action=action, target=target: core.members_who(
                guid, action, target, cursor=cursor, limit=2), "members", "uid") == expected
            nonempty += bool(expected)
    assert nonempty >= 3, nonempty  # not vacuous: some lists have members


def paged(fetch: Any, key: str, field: str) -> list[str]:
    seen: list[str] = []
    cursor = None
    for _ in range(1000):
        page = fetch(cursor)
        seen += [item[field] for item in page[key]]
        cursor = page["nextCursor"]
        if cursor is None:
            return seen
    raise AssertionError("paging did not end")


def test_a_list_over_every_group_pages_past_the_scan_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """getGroupDetails asks about every group: a page looks at SCAN_LIMIT at most, and resumes."""
    import sidecar.core
    monkeypatch.setattr(sidecar.core, "SCAN_LIMIT", 7)
    core = Sidecar(POLICY, SQLiteStore(tmp_path / "many.db"))
    ops = [{"op": "put_group", "guid": f"g{i:03d}", "owner": "o"} for i in range(40)]
    ops += [{"op": "ban", "guid": f"g{i:03d}", "uid": "u"} for i in range(0, 40, 3)]
    core.write(lambda tx: (ops, None), "test")
    expected = [f"g{i:03d}" for i in range(40) if i % 3]
    assert paged(lambda cursor: core.groups_where("u", "getGroupDetails", cursor=cursor, limit=5),
                 "groups", "guid") == expected


def test_capabilities_over_http_equal_authorize(shared_server: Server) -> None:
    srv = shared_server
    srv.ok("PUT", "/groups/capsg", {"owner": "capso"})
    srv.ok("POST", "/groups/capsg/members", {"moderators": ["capsm"], "participants": ["capsp"]})
    for uid, guid, target in [("capsm", "capsg", None), ("capsm", "capsg", "capsp"), ("capsp", None, None),
                              ("capso", "capsg", "capsm")]:
        body = {"uid": uid, **({"guid": guid} if guid else {}), **({"target": target} if target else {})}
        caps = srv.ok("POST", "/authorize/capabilities", body)["data"]
        group_actions = {a for a in ACTIONS if takes_group(POLICY.actions[a])}
        checks = [{**body, "action": action} if action in group_actions else
                  {k: v for k, v in {**body, "action": action}.items() if k != "guid"} for action in ACTIONS]
        results = srv.ok("POST", "/authorize/batch", {"checks": checks})["data"]["results"]
        for action, result in zip(ACTIONS, results, strict=True):
            entry = caps["actions"][action]
            if "error" in result:
                assert entry["error"] == result["error"], action
            else:
                assert {k: entry.get(k) for k in FIELDS} == {k: result.get(k) for k in FIELDS}, action
                assert result["revision"] == caps["revision"]


def test_target_scopes_are_empty_when_the_role_refuses(tmp_path: Path) -> None:
    """The role layer comes first: a moderator whose role has kickMember restricted acts on no one."""
    core = Sidecar(POLICY, SQLiteStore(tmp_path / "r.db"))
    ops = [{"op": "put_role", "role": "nokick", "record": {"role": "nokick", "name": "N", "createdAt": 0}},
           {"op": "set_restricted_features", "role": "nokick", "features": ["kickMember"]},
           {"op": "put_group", "guid": "g", "owner": "o"},
           {"op": "put_member", "guid": "g", "uid": "m", "scope": "moderator"},
           {"op": "put_member", "guid": "g", "uid": "p", "scope": "participant"}]
    core.write(lambda tx: (ops, None), "test")
    assert core.capabilities("m", "g")["actions"]["kickMembers"]["targets"] == {"actsOn": ["participant"]}
    core.write(lambda tx: ([{"op": "put_user", "uid": "m", "role": "nokick"}], None), "test")
    assert core.decide(AuthzRequest("m", "kickMembers", "g", "p"))["layer"] == "role"
    assert core.capabilities("m", "g")["actions"]["kickMembers"]["targets"] == {"actsOn": []}


def test_a_remembered_answer_never_outlives_its_revision(tmp_path: Path) -> None:
    """capabilities answers are kept per revision: a write (here by another worker of the same
    file) is seen at once, and the answer for the old revision is not served."""
    path = tmp_path / "m.db"
    core, other = Sidecar(POLICY, SQLiteStore(path)), Sidecar(POLICY, SQLiteStore(path))
    core.write(lambda tx: ([{"op": "put_group", "guid": "g", "owner": "o"},
                            {"op": "put_member", "guid": "g", "uid": "m", "scope": "moderator"}], None), "t")
    first = core.capabilities("m")
    assert first["actions"]["createGroup"]["allowed"] is True
    assert core.capabilities("m") == first  # remembered
    other.write(lambda tx: ([{"op": "put_user", "uid": "m", "role": "support"}], None), "t")
    after = core.capabilities("m")
    assert after["revision"] == first["revision"] + 1 and after["role"] == "support"
    assert after["actions"]["createGroup"]["allowed"] is False
    other.write(lambda tx: ([{"op": "delete_member", "guid": "g", "uid": "m"}], None), "t")
    assert core.capabilities("m", "g")["actions"]["kickMembers"]["targets"] == {"actsOn": []}


def test_app_wide_answers_are_shared_by_a_role_only_where_they_cannot_depend_on_the_user(tmp_path: Path) -> None:
    """capabilities reuses the app-wide actions' answers of another user of the same role (same
    target, facts and revision). Each must still be exactly /authorize's: with a constraint on the
    target's role, a user who is their own target, and users of a role that no longer exists
    (whose reason names them)."""
    core = Sidecar(POLICY, SQLiteStore(tmp_path / "shared.db"))
    core.write(lambda tx: ([
        {"op": "set_role_permissions", "role": "default", "values": {"getUserDetails.allowedRoles": ["support"],
                                                                     "listUsers.allowedRoles": ["restricted"]}},
        *({"op": "put_user", "uid": uid, "role": role} for uid, role in [
            ("d1", "default"), ("d2", "default"), ("s1", "support"), ("r1", "restricted"),
            ("ghost1", "gone"), ("ghost2", "gone")])], None), "test")
    app_wide = [name for name in ACTIONS if name not in core.engine.group_actions]
    asked = [("d1", None), ("d2", None), ("d1", "s1"), ("d2", "r1"), ("d1", "d1"), ("d2", "d2"), ("d1", "s1"),
             ("ghost1", None), ("ghost2", None), ("ghost1", "s1"), ("ghost2", "s1")]
    seen: set[tuple[str, bool]] = set()
    for uid, target in asked:
        caps = core.capabilities(uid, None, target)
        for action in app_wide:
            entry = caps["actions"][action]
            expected = answer(core, AuthzRequest(uid, action, None, target, {}))
            assert {k: entry[k] for k in (*FIELDS, "error") if k in entry} == expected, (uid, target, action)
            seen.add((action, bool(entry.get("allowed"))))
    assert ("getUserDetails", True) in seen and ("getUserDetails", False) in seen  # the target's role decides
