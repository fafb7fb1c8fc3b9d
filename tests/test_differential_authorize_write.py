"""Differential: for every operation that has both a check and an onBehalfOf write, /authorize and
the write agree on allowed/denied and on the code, over generated worlds (random users, roles,
restricted features, groups, scopes, bans and per-group overrides). Seeded and reproducible.

The pure half runs thousands of cases on the engine and the write plans (what the two routes
call); the HTTP half replays a few hundred through a real server, where the write's answer is
what a caller sees (status, code, message) and /authorize is asked first on the same state.
"""
from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sidecar import groups as grp
from sidecar.core import WriteContext
from sidecar.engine import AuthzRequest, Decision, Engine
from sidecar.errors import ChatAuthzError
from sidecar.policy import load_policy
from sidecar.state import Op, RuntimeState
from tests.conftest import Server

ROOT = Path(__file__).resolve().parent.parent
POLICY = load_policy(ROOT / "policies", ROOT / "model.conf")
SCOPES = ("admin", "moderator", "participant")
LISTS = {"admin": "admins", "moderator": "moderators", "participant": "participants"}
FEATURES = ("u.ban", "u.unban", "u.kickMember", "u.addMember", "u.changeScope", "u.joinGroup", "u.leaveGroup",
            "u.patchOwner", "u.deleteGroup", "u.updateGroup", "u.createGroup")
ROLE_KEYS = ("createGroup", "joinGroup")
SCOPE_OVERRIDES = ("addMembers", "kickMembers", "ban", "unban", "changeScope", "editGroup", "deleteGroup",
                   "leaveGroup")
OPERATIONS = ("create", "update", "delete", "transfer", "join", "leave", "add", "kick", "ban", "unban",
              "changeScope")


@dataclass(frozen=True)
class Case:
    """One operation: the /authorize request and the write that does the same thing."""

    operation: str
    actor: str
    guid: str
    target: str | None = None
    new_scope: str | None = None
    via_batch: bool = False  # add/join/ban through POST /groups/{guid}/members

    @property
    def action(self) -> str:
        return {"create": "createGroup", "update": "editGroup", "delete": "deleteGroup",
                "transfer": "transferOwnership", "join": "joinGroup", "leave": "leaveGroup",
                "add": "addMembers", "kick": "kickMembers", "ban": "ban", "unban": "unban",
                "changeScope": "changeScope"}[self.operation]

    @property
    def context(self) -> dict[str, Any]:
        return {"newScope": self.new_scope} if self.new_scope else {}

    def request(self) -> AuthzRequest:
        return AuthzRequest(self.actor, self.action, self.guid, self.target, self.context)

    def check_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"uid": self.actor, "action": self.action, "guid": self.guid}
        if self.target:
            body["target"] = self.target
        if self.context:
            body["context"] = self.context
        return body


def world_ops(rng: random.Random) -> tuple[list[Op], list[str], list[str]]:
    """A random world: the ops that build it, its uids and its guids (some never created)."""
    uids = [f"u{i}" for i in range(rng.randint(4, 8))]
    guids = [f"g{i}" for i in range(rng.randint(2, 4))]
    ops: list[Op] = []
    custom = {"op": "put_role", "role": "custom", "record": {"role": "custom", "name": "Custom", "createdAt": 0}}
    ops.append(custom)
    values = {key: rng.choice(("allow", "deny")) for key in rng.sample(ROLE_KEYS, rng.randint(0, len(ROLE_KEYS)))}
    if values:
        ops.append({"op": "set_role_permissions", "role": "custom", "values": values})
    ops.append({"op": "set_restricted_features", "role": "custom",
                "features": sorted(f.removeprefix("u.") for f in rng.sample(FEATURES, rng.randint(0, 3)))})
    for uid in uids:
        role = rng.choice(("default", "default", "default", "support", "restricted", "custom"))
        if role != "default":
            ops.append({"op": "put_user", "uid": uid, "role": role})
    for guid in guids[:-1]:  # the last guid is never created
        owner = rng.choice(uids)
        ops += [{"op": "put_group", "guid": guid, "owner": owner},
                {"op": "put_member", "guid": guid, "uid": owner, "scope": "admin"}]
        for uid in uids:
            if uid == owner:
                continue
            fate = rng.random()
            if fate < 0.55:
                ops.append({"op": "put_member", "guid": guid, "uid": uid, "scope": rng.choice(SCOPES)})
            elif fate < 0.7:
                ops.append({"op": "ban", "guid": guid, "uid": uid})
        for scope in rng.sample(SCOPES, rng.randint(0, 2)):
            keys = rng.sample(SCOPE_OVERRIDES, rng.randint(1, 3))
            override: dict[str, Any] = {key: rng.choice(("allow", "deny")) for key in keys}
            if rng.random() < 0.3:
                override["kickMembers.allowedScopes"] = rng.sample(SCOPES, rng.randint(1, 2))
            ops.append({"op": "set_scope_permissions", "guid": guid, "scope": scope, "values": override})
    return ops, uids, guids


def random_case(rng: random.Random, state: RuntimeState, uids: list[str], guids: list[str]) -> Case:
    operation = rng.choice(OPERATIONS)
    actor = rng.choice(uids)
    existing = [g for g in guids if g in state.owners]
    guid = rng.choice(guids) if rng.random() < 0.15 or not existing else rng.choice(existing)
    others = [u for u in uids if u != actor]
    target = rng.choice(others) if rng.random() < 0.9 else actor  # now and then a self-action
    missing = [g for g in guids if g not in state.owners]
    if operation == "create" and missing:  # PUT on an existing group is an update or a transfer
        return Case(operation, actor, rng.choice(missing))
    if operation == "create":
        operation = "update"
    if operation == "join":  # PUT on one's own membership is a scope change once a member
        return Case(operation, actor, guid, via_batch=state.scope_of(guid, actor) is not None or rng.random() < 0.5)
    if operation == "update" and existing:  # PUT on a missing group creates it
        return Case(operation, actor, rng.choice(existing))
    if operation in ("update", "delete", "leave"):
        return Case("delete" if operation == "update" else operation, actor, guid)
    if operation == "transfer" and existing:  # PUT on a missing group creates it
        guid = rng.choice(existing)
        return Case(operation, actor, guid, rng.choice([u for u in uids if u != state.owners[guid]]))
    if operation == "transfer":
        return Case("delete", actor, guid)
    if operation == "add":
        # not a member: adding an existing member is a scope change (PUT), not an add
        outsiders = [u for u in others if state.scope_of(guid, u) is None] or others  # adding oneself is joining
        chosen = rng.choice(outsiders)
        batch = state.scope_of(guid, chosen) is not None or rng.random() < 0.5  # POST: ERR_ALREADY_JOINED
        return Case(operation, actor, guid, chosen, rng.choice(SCOPES), batch)
    members = [u for u in uids if state.scope_of(guid, u) is not None]
    if operation == "changeScope" and members:  # PUT on a non-member's membership is an add
        return Case(operation, actor, guid, rng.choice(members), rng.choice(SCOPES))
    if operation == "changeScope":
        return Case("delete", actor, guid)
    if operation == "kick":
        return Case(operation, actor, guid, rng.choice(others))  # kicking oneself is leaving
    return Case(operation, actor, guid, target, via_batch=operation == "ban" and rng.random() < 0.3)


def run_write(engine: Engine, state: RuntimeState, case: Case) -> tuple[list[Op] | None, str | None]:
    """The write plan on behalf of the actor: (ops, None) when done, (None, code) when refused."""
    actor, guid, target = case.actor, case.guid, case.target or ""
    tx = WriteContext(engine, state)
    try:
        if case.operation == "create":
            ops, _ = grp.plan_set_group(tx, guid, grp.parse_group({"owner": actor}), actor)
        elif case.operation == "update":
            ops, _ = grp.plan_set_group(tx, guid, state.owners.get(guid, actor), actor)
        elif case.operation == "transfer":
            ops, _ = grp.plan_set_group(tx, guid, target, actor)
        elif case.operation == "delete":
            ops, _ = grp.plan_delete_group(tx, guid, actor)
        elif case.operation == "leave":
            ops, _ = grp.plan_remove_member(tx, guid, actor, actor)
        elif case.operation == "kick":
            ops, _ = grp.plan_remove_member(tx, guid, target, actor)
        elif case.operation == "unban":
            ops, _ = grp.plan_unban(tx, guid, target, actor)
        elif case.operation == "ban" and not case.via_batch:
            ops, _ = grp.plan_ban(tx, guid, target, actor)
        elif case.operation in ("add", "changeScope") and not case.via_batch:
            ops, _ = grp.plan_set_member(tx, guid, target, grp.parse_member({"scope": case.new_scope}), actor)
        elif case.operation == "join" and not case.via_batch:
            ops, _ = grp.plan_set_member(tx, guid, actor, "participant", actor)
        else:  # add, join or ban through the batch route: the one uid's own result
            uid, list_name = {"add": (target, LISTS[case.new_scope or "participant"]),
                              "join": (actor, "participants"), "ban": (target, "usersToBan")}[case.operation]
            ops, results = grp.plan_add_members(tx, guid, grp.parse_members({list_name: [uid]}), actor)
            result = results[list_name][uid]
            if not result["success"]:
                return None, str(result["error"]["code"])
    except ChatAuthzError as exc:
        return None, exc.code
    return ops, None


def agree(decision: Decision, ops: list[Op] | None, code: str | None, case: Case) -> None:
    if decision.allowed:
        assert ops is not None, f"{case}: /authorize allows ({decision.reason}) but the write refuses: {code}"
    else:
        assert ops is None, f"{case}: /authorize denies ({decision.code}: {decision.reason}) but the write succeeds"
        assert code == decision.code, f"{case}: /authorize says {decision.code}, the write {code}"


Step = tuple[Case, Decision, "list[Op] | None", "str | None", RuntimeState]


def walk(seed: int, worlds: int = 25, steps: int = 24) -> Iterator[Step]:
    """Random worlds, each moved on by random operations: (case, decision, the write's ops, its
    code, the state) for every step, all taken on the state before the step."""
    rng = random.Random(seed)
    engine = Engine(POLICY)
    for _world in range(worlds):
        ops, uids, guids = world_ops(rng)
        state = RuntimeState()
        state.apply_all(ops, 1)
        for _step in range(steps):
            case = random_case(rng, state, uids, guids)
            decision = engine.decide(case.request(), state)
            written, code = run_write(engine, state, case)
            yield case, decision, written, code, state
            if written:  # the world moves on by what was allowed
                state.apply_all(written, state.revision + 1)


@pytest.mark.parametrize("seed", range(8))
def test_authorize_and_on_behalf_writes_agree(seed: int) -> None:
    seen: dict[tuple[str, bool], int] = {}
    for case, decision, written, code, _ in walk(seed):
        agree(decision, written, code, case)
        seen[(case.operation, decision.allowed)] = seen.get((case.operation, decision.allowed), 0) + 1
    # the generator reaches the denial of every operation, and allows often (else it proves little)
    for operation in OPERATIONS:
        assert seen.get((operation, False)), (operation, seen)
    assert sum(seen.values()) == 25 * 24
    assert sum(n for (_, allowed), n in seen.items() if allowed) > 40, seen


def test_every_operation_is_allowed_somewhere() -> None:
    """Across the seeds, every operation is allowed at least once (the allow half is tested too)."""
    allowed = {case.operation for seed in range(8) for case, decision, *_ in walk(seed) if decision.allowed}
    assert allowed == set(OPERATIONS)


# -- the same through a real server ------------------------------------------------------------
def http_write(srv: Server, case: Case) -> Any:
    headers = {"onBehalfOf": case.actor}
    guid, target = case.guid, case.target
    if case.operation == "create":
        return srv.put(f"/groups/{guid}", {"owner": case.actor}, headers=headers)
    if case.operation == "update":
        owner = srv.get(f"/groups/{guid}").json().get("data", {}).get("owner", case.actor)
        return srv.put(f"/groups/{guid}", {"owner": owner}, headers=headers)
    if case.operation == "transfer":
        return srv.put(f"/groups/{guid}", {"owner": target}, headers=headers)
    if case.operation == "delete":
        return srv.delete(f"/groups/{guid}", headers=headers)
    if case.operation == "leave":
        return srv.delete(f"/groups/{guid}/members/{case.actor}", headers=headers)
    if case.operation == "kick":
        return srv.delete(f"/groups/{guid}/members/{target}", headers=headers)
    if case.operation == "unban":
        return srv.delete(f"/groups/{guid}/bannedusers/{target}", headers=headers)
    if case.operation == "ban":
        return srv.post(f"/groups/{guid}/bannedusers/{target}", headers=headers)
    if case.operation == "join" and case.via_batch:
        return srv.post(f"/groups/{guid}/members", {"participants": [case.actor]}, headers=headers)
    if case.operation == "join":
        return srv.put(f"/groups/{guid}/members/{case.actor}", {"scope": "participant"}, headers=headers)
    if case.operation == "add" and case.via_batch:
        return srv.post(f"/groups/{guid}/members", {LISTS[case.new_scope or "participant"]: [target]},
                        headers=headers)
    return srv.put(f"/groups/{guid}/members/{target}", {"scope": case.new_scope}, headers=headers)


def test_authorize_and_on_behalf_writes_agree_over_http(server: Server) -> None:
    rng = random.Random(2026)
    srv = server
    ops, uids, guids = world_ops(rng)
    state = RuntimeState()
    state.apply_all(ops, 1)
    # the same world through the management API: roles, users, groups, members, bans, overrides
    srv.ok("POST", "/roles", {"role": "custom", "name": "Custom"})
    for op in ops:
        if op["op"] == "set_role_permissions":
            srv.ok("PUT", "/roles/custom/permissions", {"permissions": op["values"]})
        elif op["op"] == "set_restricted_features" and op["features"]:
            srv.ok("POST", "/roles/custom/restrictedfeatures",
                   {"featuresToRestrict": [f"u.{f}" for f in op["features"]]})
        elif op["op"] == "put_user":
            srv.ok("PUT", f"/users/{op['uid']}", {"role": op["role"]})
        elif op["op"] == "put_group":
            srv.ok("PUT", f"/groups/{op['guid']}", {"owner": op["owner"]})
        elif op["op"] == "put_member" and state.owners.get(op["guid"]) != op["uid"]:
            srv.ok("PUT", f"/groups/{op['guid']}/members/{op['uid']}", {"scope": op["scope"]})
        elif op["op"] == "ban":
            srv.ok("POST", f"/groups/{op['guid']}/bannedusers/{op['uid']}")
        elif op["op"] == "set_scope_permissions":
            srv.ok("PUT", f"/groups/{op['guid']}/scopes/{op['scope']}/permissions", {"permissions": op["values"]})
    outcomes = {True: 0, False: 0}
    for _ in range(150):
        case = random_case(rng, state, uids, guids)
        answer = srv.authorize(**{k: v for k, v in case.check_body().items()})
        response = http_write(srv, case)
        error = response.json().get("error")
        if response.status_code == 200 and case.via_batch:  # POST members: the uid's own result
            uid = case.actor if case.operation == "join" else case.target
            result = next(v[uid] for v in response.json()["data"].values() if uid in v)
            error = None if result["success"] else result["error"]
        if answer["allowed"]:
            assert response.status_code == 200 and error is None, (case, answer, response.text)
        else:
            assert response.status_code in (200, 400, 403, 404) and error, (case, answer, response.text)
            assert (error["code"], error["message"]) == (answer["code"], answer["reason"]), (case, answer, error)
        outcomes[answer["allowed"]] += 1
        # keep the pure model in step, and check it still predicts the server
        decision = Engine(POLICY).decide(case.request(), state)
        assert decision.allowed == answer["allowed"] and decision.code == answer.get("code"), (case, answer)
        written, _ = run_write(Engine(POLICY), state, case)
        if written:
            state.apply_all(written, state.revision + 1)
    assert outcomes[True] > 10 and outcomes[False] > 10, outcomes


def test_explanations_never_contradict_the_decision() -> None:
    """`chatauthz authorize --explain` over the same generated cases: a denial shows the step that
    refused, an allow shows none."""
    from sidecar.explain import REFUSES, explain
    engine = Engine(POLICY)
    for case, decision, _, _, state in walk(77, worlds=20, steps=20):
        explained, steps = explain(engine, case.request(), state)
        refusing = [step for step in steps if step.verdict == REFUSES]
        assert explained == decision and bool(refusing) is not decision.allowed, (case, decision, steps)
