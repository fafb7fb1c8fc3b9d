"""The shipped policy test suites (policies/tests/*.yaml), one pytest test per case, plus the
suite format itself: worlds, problems with their lines, and what a failure prints. Pure."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sidecar.policy import load_policy
from sidecar.suites.runner import Case, build_state, describe_case_failure, load_suite_text, load_suites, run_case

REPO = Path(__file__).resolve().parents[1]
POLICY = load_policy(REPO / "policies")
CASES, PROBLEMS = load_suites(REPO / "policies" / "tests", POLICY)


def test_shipped_suites_have_no_problems() -> None:
    assert PROBLEMS == []
    assert {c.file for c in CASES} >= {"tests/scope_table.yaml", "tests/clearance.yaml", "tests/example_roles.yaml"}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_shipped_case(case: Case) -> None:
    result = run_case(case, POLICY)
    assert result.passed, describe_case_failure(result)


# -- what the shipped suites cover ---------------------------------------------------------------
PRIVILEGES = ("changeScope", "addMembers", "kickMembers", "ban", "unban", "editGroup", "deleteGroup",
              "sendMessage", "initiateCall")
ACTORS = {"admin": "admin", "mod": "moderator", "part": "participant"}


def test_scope_table_covers_every_scope_and_privilege_allowed_and_refused() -> None:
    table = [c for c in CASES if c.file == "tests/scope_table.yaml"]
    cells = {(ACTORS[check.request.uid], check.request.action) for case in table for check in case.checks}
    assert cells == {(scope, action) for scope in ACTORS.values() for action in PRIVILEGES}
    outcomes = {check.expect["allowed"] for case in table for check in case.checks}
    assert outcomes == {True, False}
    # the moderator's row is the interesting one: each privilege it lacks is named refused
    refused = {check.request.action for case in table for check in case.checks
               if check.request.uid == "mod" and not check.expect["allowed"]}
    assert refused == {"changeScope", "addMembers", "kickMembers", "ban", "deleteGroup"}


def test_clearance_and_example_roles_cover_what_the_issue_names() -> None:
    names = {c.name for c in CASES}
    for expected in ("a moderator may not act on an admin", "an admin may not act on another admin",
                     "the owner may act on admins", "nobody may act on themselves",
                     "a new scope may not rank above the actor's", "support may not createGroup or blockUser",
                     "restricted sends text only", "restricted may not joinGroup (restricted feature u.joinGroup)",
                     "default is allowed"):
        assert expected in names


# -- the suite format ----------------------------------------------------------------------------
def load(text: str) -> tuple[list[Case], list[str]]:
    return load_suite_text(text, "tests/t.yaml", POLICY)


def test_world_ops_mirror_the_api() -> None:
    cases, problems = load("""
suite: s
world:
  users: {u: support}
  groups:
    g: {owner: o, members: {m: moderator}, bans: [b], overrides: {participant: {sendMessage: deny}}}
cases:
  - name: c
    world:
      roles:
        vip: {name: VIP, permissions: {createGroup: deny}, restrictedFeatures: [u.listUsers]}
      users: {v: vip}
    checks:
      - {uid: v, action: createGroup, expect: {allowed: false}}
""")
    assert problems == []
    state = build_state(cases[0].ops)
    assert state.users == {"u": "support", "v": "vip"}
    assert state.owners == {"g": "o"}
    assert state.members == {"g": {"o": "admin", "m": "moderator"}}  # the owner is an admin member
    assert state.bans == {"g": {"b"}}
    assert state.overrides == {"g": {"participant": {"sendMessage": "deny"}}}
    assert state.roles["vip"]["name"] == "VIP"
    assert state.role_permissions == {"vip": {"createGroup": "deny"}}
    assert state.restricted == {"vip": frozenset({"listUsers"})}
    assert run_case(cases[0], POLICY).passed


def test_every_problem_of_a_suite_is_reported_with_its_line() -> None:
    text = """suite: s
world:
  users: {u: ghost}
  groups:
    g:
      owner: o
      members: {a: boss}
      overrides: {participant: {fly: deny}}
cases:
  - name: c
    checks:
      - {uid: u, action: teleport, expect: {allowed: true}}
      - {uid: u, action: kickMembers, guid: g, expect: {allowed: false}}
      - {uid: u, action: sendMessage, expect: {allowed: true, layer: moon}, colour: red}
      - {uid: u, action: sendMessage, expect: {allowed: true, code: ERR_X}}
      - {uid: u, action: sendMessage}
  - name: c
    checks:
      - {uid: u, action: sendMessage, expect: {allowed: true}}
  - name: c
    checks:
      - {uid: u, action: sendMessage, expect: {allowed: true}}
"""
    cases, problems = load(text)
    assert problems == [
        "tests/t.yaml:3: users: u has role 'ghost', which does not exist (define it under world.roles or in roles.yaml)",
        "tests/t.yaml:7: group g: member a has unknown scope 'boss'; scopes are admin, moderator, participant",
        "tests/t.yaml:8: group g scope participant: unknown permission key 'fly'",
        "tests/t.yaml:12: case 'c' check 1: action: unknown action 'teleport'; see the catalogue for the "
        "actions the sidecar knows",
        "tests/t.yaml:13: case 'c' check 2: target: kickMembers acts on a member: target is required",
        "tests/t.yaml:14: case 'c' check 3: unknown field 'colour'; allowed: action, context, expect, guid, "
        "name, target, uid",
        "tests/t.yaml:14: case 'c' check 3: expect.layer must be one of role, membership, scope, clearance",
        "tests/t.yaml:15: case 'c' check 4: an allowed decision carries no code",
        "tests/t.yaml:16: case 'c' check 5: expect must be a mapping with allowed: true or false",
        "tests/t.yaml:20: case 'c' is defined twice (first at line 17)",
    ]
    assert cases == []  # the suite's world is broken: none of its cases would mean anything


def test_a_failure_prints_the_check_the_expected_and_actual_decision_and_the_explanation() -> None:
    cases, problems = load("""suite: s
world: {users: {r: restricted}}
cases:
  - name: restricted sends images
    checks:
      - {uid: r, action: sendMessage, target: x, context: {messageType: text}, expect: {allowed: true}}
      - name: image
        uid: r
        action: sendMessage
        target: x
        context: {messageType: image}
        expect: {allowed: true}
""")
    assert problems == []
    result = run_case(cases[0], POLICY)
    assert not result.passed
    assert describe_case_failure(result) == "\n".join([
        "tests/t.yaml:4: suite 's' case 'restricted sends images': 1 of 2 checks failed",
        "  check image (line 7)",
        "    request:     uid=r action=sendMessage target=x context.messageType='image'",
        "    expected:    allowed=true",
        "    actual:      allowed=false code=ERR_PERMISSION_DENIED layer=role",
        "    explanation: role 'restricted' has sendMessage.allowedMessageTypes = [text] (from roles.yaml); "
        "context.messageType is 'image'",
    ])


def test_a_case_world_adds_to_the_suite_world_and_cases_do_not_share_state() -> None:
    cases, problems = load("""suite: s
world:
  groups: {g: {owner: o, members: {p: participant}}}
cases:
  - name: promoted
    world:
      groups: {g: {owner: o, members: {p: admin}}}
    checks:
      - {uid: p, action: deleteGroup, guid: g, expect: {allowed: true}}
  - name: not promoted
    checks:
      - {uid: p, action: deleteGroup, guid: g, expect: {allowed: false, code: ERR_PERMISSION_DENIED, layer: scope}}
""")
    assert problems == []
    assert [run_case(c, POLICY).passed for c in cases] == [True, True]


def test_a_broken_case_world_leaves_out_that_case_only() -> None:
    cases, problems = load("""suite: s
cases:
  - name: broken
    world: {users: {u: ghost}}
    checks:
      - {uid: u, action: listUsers, expect: {allowed: true}}
  - name: fine
    checks:
      - {uid: u, action: listUsers, expect: {allowed: true}}
""")
    assert problems == ["tests/t.yaml:4: users: u has role 'ghost', which does not exist (define it under "
                        "world.roles or in roles.yaml)"]
    assert [c.name for c in cases] == ["fine"]


def test_a_duplicate_key_in_a_suite_is_a_problem_with_its_line() -> None:
    _, problems = load("suite: s\nsuite: t\ncases:\n  - name: c\n    checks:\n"
                       "      - {uid: u, action: sendMessage, expect: {allowed: true}}\n")
    assert problems == ["tests/t.yaml:2: invalid YAML: duplicate key 'suite'"]


def test_suite_files_are_not_policy_files(tmp_path: Path) -> None:
    """The loader reads catalogue, roles and scopes only: a broken suite never breaks the policy."""
    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    shutil.copy(REPO / "model.conf", tmp_path / "model.conf")
    (policies / "tests" / "broken.yaml").write_text("roles: [this is: not a policy\n", encoding="utf-8")
    assert load_policy(policies).content_hash == POLICY.content_hash
