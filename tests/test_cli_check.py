"""`chatauthz check`: broken policy folders (one per kind of problem, then several at once) report
every problem as 'file:line: message', sorted, with exit code 3; a failing suite exits 4 and
prints the check, the expected and actual decision and the explanation; --format json and
--junit carry the same report. Runs `sidecar.cli.main` in-process (one subprocess test)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from sidecar.cli import main
from sidecar.policy import load_policy
from sidecar.suites.runner import load_suites

REPO = Path(__file__).resolve().parents[1]
_CASES = load_suites(REPO / "policies" / "tests", load_policy(REPO / "policies"))[0]
SHIPPED_CASES = len(_CASES)
SHIPPED_CHECKS = sum(len(c.checks) for c in _CASES)
SHIPPED_FILES = len({c.file for c in _CASES})


# -- helpers ---------------------------------------------------------------------------------------
def make_policies(tmp_path: Path, *edits: tuple[str, str, str], tests: bool = True) -> Path:
    """A copy of the shipped policies (and ../model.conf) with (file, old, new) replacements;
    file is relative to the policy folder, or "model.conf"."""
    policies = tmp_path / "repo" / "policies"
    shutil.copytree(REPO / "policies", policies, ignore=None if tests else shutil.ignore_patterns("tests"))
    shutil.copy(REPO / "model.conf", policies.parent / "model.conf")
    for name, old, new in edits:
        path = policies.parent / name if name == "model.conf" else policies / name
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        assert old in text, f"{name} does not contain {old!r}"
        path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return policies


def line_of(path: Path, fragment: str, nth: int = 1) -> int:
    """1-based line of the nth line containing fragment."""
    seen = 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if fragment in line:
            seen += 1
            if seen == nth:
                return number
    raise AssertionError(f"{fragment!r} not found in {path}")


def check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["check", *args])
    out, err = capsys.readouterr()
    return code, out, err


def problems(out: str) -> list[str]:
    """The problem lines of a text report (everything before the summary)."""
    return [line for line in out.splitlines() if not line.startswith(("chatauthz check:", "policy files OK"))]


def assert_invalid(capsys: pytest.CaptureFixture[str], policies: Path, expected: list[str]) -> None:
    code, out, _ = check(capsys, str(policies))
    assert problems(out) == expected
    assert out.splitlines()[-1] == f"chatauthz check: {len(expected)} problem(s) in {policies}"
    assert code == 3


# -- the shipped policies --------------------------------------------------------------------------
def test_shipped_policies_pass(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = check(capsys)
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].startswith(f"policy files OK: {REPO / 'policies'} (hash ")
    assert lines[-1] == f"tests: {SHIPPED_CASES} passed, 0 failed ({SHIPPED_CASES} cases, {SHIPPED_CHECKS} checks " \
                        f"in {SHIPPED_FILES} suite file(s))"
    assert err == ""


def test_a_folder_without_suites_passes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    policies = make_policies(tmp_path, tests=False)
    code, out, _ = check(capsys, str(policies))
    assert code == 0
    assert out.splitlines()[-1] == "tests: 0 passed, 0 failed (0 cases, 0 checks in 0 suite file(s))"


# -- one kind of problem at a time -----------------------------------------------------------------
def test_unknown_keys(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    policies = make_policies(
        tmp_path,
        ("roles.yaml", "    name: Support agent\n", "    name: Support agent\n    colour: blue\n"),
        ("catalogue.yaml", "  editProfile: {type: allowDeny, title: Edit own profile}",
         "  editProfile: {type: allowDeny, title: Edit own profile, hint: x}"),
        ("scopes.yaml", "version: 1\n", "version: 1\nranks: {}\n"),
        ("catalogue.yaml", "  logout: {actions: [logout], title: Log out}",
         "  logout: {actions: [logout], title: Log out, gates: [x]}"),
        ("scopes.yaml", "    rank: 1\n", "    rank: 1\n    colour: grey\n"),
    )
    cat, roles, scopes = (policies / n for n in ("catalogue.yaml", "roles.yaml", "scopes.yaml"))
    assert_invalid(capsys, policies, [
        f"catalogue.yaml:{line_of(cat, 'hint: x')}: editProfile: unknown field 'hint'",
        f"catalogue.yaml:{line_of(cat, 'gates: [x]')}: feature logout: unknown field 'gates'",
        f"roles.yaml:{line_of(roles, 'colour: blue')}: role support: unknown field 'colour'",
        f"scopes.yaml:{line_of(scopes, 'ranks: {}')}: unknown top-level key 'ranks'",
        f"scopes.yaml:{line_of(scopes, 'colour: grey')}: scope participant: unknown field 'colour'",
    ])


def test_wrong_value_types(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    policies = make_policies(
        tmp_path,
        ("scopes.yaml", "    rank: 2\n", "    rank: high\n"),
        ("scopes.yaml", "    description: Every other member; sends and receives messages and calls.",
         "    description: [every, other, member]"),
        ("roles.yaml", "    name: Support agent\n", "    name: [Support, agent]\n"),
        ("roles.yaml", "restrictedFeatures: [u.joinGroup]", "restrictedFeatures: u.joinGroup"),
        ("roles.yaml", "    permissions: {}\n", "    permissions: {}\n    restrictedFeatures: [{u.listUsers: true}]\n"),
        ("catalogue.yaml", "  logout: {actions: [logout], title: Log out}",
         "  logout: {actions: [[logout]], title: Log out}"),
        ("catalogue.yaml", "  listCalls: {actions: [listCalls], title: List calls}",
         "  listCalls: {actions: [listCalls], title: {en: List calls}}"),
    )
    cat, roles, scopes = (policies / n for n in ("catalogue.yaml", "roles.yaml", "scopes.yaml"))
    assert_invalid(capsys, policies, [
        f"catalogue.yaml:{line_of(cat, '[[logout]]')}: feature logout: actions must be a list of action names",
        f"catalogue.yaml:{line_of(cat, 'listCalls: {actions')}: feature listCalls: title must be a string of at "
        "most 255 characters",
        f"roles.yaml:{line_of(roles, 'u.listUsers: true')}: role default: restrictedFeatures must be a list of "
        "feature keys",
        f"roles.yaml:{line_of(roles, '[Support, agent]')}: role support: name must be a string of 1-100 characters",
        f"roles.yaml:{line_of(roles, 'restrictedFeatures: u.joinGroup')}: role restricted: restrictedFeatures must "
        "be a list of feature keys",
        f"scopes.yaml:{line_of(scopes, 'rank: high')}: scope moderator: rank must be an integer 1-100",
        f"scopes.yaml:{line_of(scopes, '[every, other, member]')}: scope participant: description must be a "
        "string of at most 255 characters",
    ])


def test_values_outside_a_keys_allowed_set(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    policies = make_policies(
        tmp_path,
        ("roles.yaml", "      createGroup: deny\n      blockUser", "      createGroup: maybe\n      blockUser"),
        ("roles.yaml", "      sendMessage.allowedMessageTypes: [text]", "      sendMessage.allowedMessageTypes: [text, gif]"),
        ("roles.yaml", "    permissions: {}\n", "    permissions: {}\n    settings: {listUsers: some}\n"),
        ("scopes.yaml", "      deleteGroup: deny\n  participant", "      deleteGroup: never\n  participant"),
        ("catalogue.yaml", "  addReaction: {type: allowDeny,", "  addReaction: {type: boolean,"),
        ("catalogue.yaml", "  joinCall: {type: allowDeny, title: Join calls}",
         "  joinCall: {type: allowDeny, title: Join calls, target: optional}"),
    )
    cat, roles, scopes = (policies / n for n in ("catalogue.yaml", "roles.yaml", "scopes.yaml"))
    assert_invalid(capsys, policies, [
        f"catalogue.yaml:{line_of(cat, 'addReaction: {type: boolean')}: addReaction: type must be one of "
        "allowDeny, mode, stringArray, rolesStringArray, customStringArray",
        f"catalogue.yaml:{line_of(cat, 'target: optional')}: joinCall: target may only be 'required'",
        f"roles.yaml:{line_of(roles, 'listUsers: some')}: role default: settings.listUsers must be one of all, "
        "friendsOnly; got 'some'",
        f"roles.yaml:{line_of(roles, 'createGroup: maybe')}: role support: createGroup must be one of allow, "
        "deny; got 'maybe'",
        f"roles.yaml:{line_of(roles, '[text, gif]')}: role restricted: sendMessage.allowedMessageTypes does not "
        "allow 'gif'; allowed: text, image, audio, video, file",
        f"scopes.yaml:{line_of(scopes, 'deleteGroup: never')}: scope moderator: deleteGroup must be one of "
        "allow, deny; got 'never'",
    ])


def test_references_to_roles_scopes_features_and_actions_that_do_not_exist(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    policies = make_policies(
        tmp_path,
        ("roles.yaml", "      blockUser: deny", "      blockUser: deny\n      blockUser.allowedRoles: [restricted, ghost]"),
        ("roles.yaml", "restrictedFeatures: [u.joinGroup]", "restrictedFeatures: [u.joinGroup, u.teleport]"),
        ("catalogue.yaml", "  createCall: {actions: [initiateCall]", "  createCall: {actions: [startCall]"),
        ("catalogue.yaml", "listMembers.allowedScopes: {type: stringArray, values: [admin, moderator, participant]",
         "listMembers.allowedScopes: {type: stringArray, values: [admin, moderator, participant, owner]"),
        ("catalogue.yaml", "  getUserDetails.allowedRoles: {type: rolesStringArray,",
         "  getUserDetails.allowedRoles: {type: rolesStringArray, default: [support, vip],"),
        ("scopes.yaml", "      unban: allow\n      listBannedUsers: allow\n      editGroup: allow\n      deleteGroup: allow",
         "      unban: allow\n      listBannedUsers: allow\n      editGroup: allow\n      deleteGroup: allow\n"
         "      archiveGroup: allow"),
    )
    cat, roles, scopes = (policies / n for n in ("catalogue.yaml", "roles.yaml", "scopes.yaml"))
    assert_invalid(capsys, policies, [
        f"catalogue.yaml:{line_of(cat, 'default: [support, vip]')}: getUserDetails.allowedRoles: default names "
        "role 'vip', which does not exist",
        f"catalogue.yaml:{line_of(cat, 'participant, owner]')}: listMembers.allowedScopes: 'owner' is not a "
        "scope; scopes are admin, moderator, participant",
        f"catalogue.yaml:{line_of(cat, 'startCall')}: feature createCall: unknown action 'startCall'",
        f"roles.yaml:{line_of(roles, 'ghost')}: role support: blockUser.allowedRoles names role 'ghost', "
        "which does not exist",
        f"roles.yaml:{line_of(roles, 'u.teleport')}: role restricted: unknown feature 'u.teleport'",
        f"scopes.yaml:{line_of(scopes, 'archiveGroup')}: scope admin: unknown permission key 'archiveGroup'",
    ])


def test_duplicate_ids_are_reported_with_their_line_and_do_not_hide_other_problems(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    policies = make_policies(
        tmp_path,
        ("roles.yaml", "  restricted:\n", "  support:\n    name: Support again\n  restricted:\n    colour: red\n"),
        ("roles.yaml", "restrictedFeatures: [u.joinGroup]", "restrictedFeatures: [u.joinGroup, joinGroup]"),
        ("scopes.yaml", "  participant:\n", "  moderator:\n    rank: 2\n  participant:\n"),
        ("catalogue.yaml", "  logout: {actions: [logout], title: Log out}",
         "  logout: {actions: [logout], title: Log out}\n  ban: {actions: [ban], title: Ban again}"),
        ("catalogue.yaml", "extraActions: [getMessage, logout,", "extraActions: [getMessage, logout, logout,"),
        ("catalogue.yaml", "  getMember: {actions: [listMembers]", "  getMember: {actions: [listMembers, listMembers]"),
    )
    cat, roles, scopes = (policies / n for n in ("catalogue.yaml", "roles.yaml", "scopes.yaml"))
    assert_invalid(capsys, policies, [
        f"catalogue.yaml:{line_of(cat, 'extraActions:')}: extraActions: logout is listed more than once",
        f"catalogue.yaml:{line_of(cat, 'listMembers, listMembers')}: feature getMember: action 'listMembers' is "
        "listed more than once",
        f"catalogue.yaml:{line_of(cat, 'Ban again')}: invalid YAML: duplicate key 'ban'",
        f"roles.yaml:{line_of(roles, 'support:', 2)}: invalid YAML: duplicate key 'support'",
        f"roles.yaml:{line_of(roles, 'colour: red')}: role restricted: unknown field 'colour'",
        f"roles.yaml:{line_of(roles, 'u.joinGroup, joinGroup')}: role restricted: feature 'u.joinGroup' is "
        "listed more than once",
        f"scopes.yaml:{line_of(scopes, 'moderator:', 2)}: invalid YAML: duplicate key 'moderator'",
    ])


def test_a_role_that_can_never_be_assigned(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Role ids are lowercased on assignment: 'Support' next to 'support' can never be given."""
    policies = make_policies(tmp_path, ("roles.yaml", "  restricted:\n", "  Support:\n    name: Upper\n  restricted:\n"))
    roles = policies / "roles.yaml"
    assert_invalid(capsys, policies, [
        f"roles.yaml:{line_of(roles, 'Support:')}: role 'Support' can never be assigned: role ids are lowercased "
        f"on assignment, which gives the role 'support' (line {line_of(roles, 'support:')})",
    ])


def test_model_conf_problems(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    policies = make_policies(tmp_path, ("model.conf", "p = priority, layer, sub, dom, obj, eft, source",
                                        "p = priority, sub, dom, obj, eft"))
    assert_invalid(capsys, policies, ["model.conf:1: p must be defined as p = priority, layer, sub, dom, obj, "
                                      "eft, source"])


def test_missing_files(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    policies = make_policies(tmp_path)
    (policies / "scopes.yaml").unlink()
    (policies.parent / "model.conf").unlink()
    code, out, _ = check(capsys, str(policies))
    assert code == 3
    found = problems(out)
    assert [p.split(": cannot read")[0] for p in found] == ["model.conf:1", "scopes.yaml:1"]


def test_explicit_model_path(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    policies = make_policies(tmp_path)
    moved = tmp_path / "elsewhere.conf"
    (policies.parent / "model.conf").rename(moved)
    assert check(capsys, str(policies))[0] == 3
    assert check(capsys, str(policies), "--model", str(moved))[0] == 0


# -- several at once -------------------------------------------------------------------------------
def test_several_problems_in_several_files_are_all_reported_sorted(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    policies = make_policies(
        tmp_path,
        ("roles.yaml", "    permissions: {}", "    permissions: {}\n    restrictedFeatures: [u.listUsers]"),
        ("roles.yaml", "      createGroup: deny\n      blockUser", "      createGroup: maybe\n      blockUser"),
        ("roles.yaml", "restrictedFeatures: [u.joinGroup]", "restrictedFeatures: [u.teleport]"),
        ("scopes.yaml", "      kickMembers.allowedScopes: [participant]", "      kickMembers.allowedScopes: [owner]"),
        ("catalogue.yaml", "  createCall: {actions: [initiateCall]", "  createCall: {actions: [startCall]"),
        ("model.conf", "r = layer, sub, dom, obj", "r = sub, dom, obj"),
        ("tests/clearance.yaml", "suite: clearance\n", "suite: clearance\nowner: nobody\n"),
    )
    cat, roles, scopes = (policies / n for n in ("catalogue.yaml", "roles.yaml", "scopes.yaml"))
    expected = [
        f"catalogue.yaml:{line_of(cat, 'startCall')}: feature createCall: unknown action 'startCall'",
        "model.conf:1: r must be defined as r = layer, sub, dom, obj",
        f"roles.yaml:{line_of(roles, 'u.listUsers')}: role default: default cannot be restricted",
        f"roles.yaml:{line_of(roles, 'createGroup: maybe')}: role support: createGroup must be one of allow, deny; "
        "got 'maybe'",
        f"roles.yaml:{line_of(roles, 'u.teleport')}: role restricted: unknown feature 'u.teleport'",
        f"scopes.yaml:{line_of(scopes, '[owner]')}: scope moderator: kickMembers.allowedScopes does not allow "
        "'owner'; allowed: admin, moderator, participant",
    ]
    # an invalid policy runs no suite, so the broken suite file is not reported yet
    assert_invalid(capsys, policies, expected)
    keyed = [(p.split(":")[0], int(p.split(":")[1])) for p in expected]
    assert keyed == sorted(keyed)
    assert line_of(roles, "u.listUsers") < 10 < line_of(roles, "createGroup: maybe")  # 9 before 14: by number


def test_problems_in_suite_files_exit_3_and_the_valid_suites_still_run(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    policies = make_policies(
        tmp_path,
        ("tests/clearance.yaml", "suite: clearance\n", "suite: clearance\nowner: nobody\n"),
        ("tests/clearance.yaml", "{uid: mod, action: kickMembers, guid: g1, target: admin,",
         "{uid: mod, action: kickMember, guid: g1, target: admin,"),
        ("tests/example_roles.yaml", "users: {sam: support,", "users: {sam: supporter,"),
    )
    clearance, examples = policies / "tests" / "clearance.yaml", policies / "tests" / "example_roles.yaml"
    code, out, _ = check(capsys, str(policies), "--format", "json")
    report = json.loads(out)
    assert code == 3
    assert report["problems"] == [
        {"file": "tests/clearance.yaml", "line": line_of(clearance, "owner: nobody"),
         "message": "suite file: unknown field 'owner'; allowed: cases, description, suite, version, world"},
        {"file": "tests/clearance.yaml", "line": line_of(clearance, "kickMember,"),
         "message": "case 'a moderator may not act on an admin' check 1: action: unknown action 'kickMember'; "
                    "see the catalogue for the actions the sidecar knows"},
        {"file": "tests/example_roles.yaml", "line": line_of(examples, "supporter"),
         "message": "users: sam has role 'supporter', which does not exist (define it under world.roles or in "
                    "roles.yaml)"},
    ]
    # the broken clearance case and the suite with a broken world are left out; the rest ran and passed
    examples_cases = sum(1 for line in examples.read_text().splitlines() if line.startswith("  - name:"))
    assert report["tests"]["failed"] == 0
    assert report["tests"]["passed"] == SHIPPED_CASES - 1 - examples_cases
    assert "tests/example_roles.yaml" not in {c["file"] for c in report["tests"]["cases"]}


# -- a failing suite -------------------------------------------------------------------------------
FAILING = ("tests/example_roles.yaml",
           "{uid: rita, action: sendMessage, target: dan, context: {messageType: image}, expect: {allowed: false, "
           "code: ERR_PERMISSION_DENIED, layer: role}}",
           "{uid: rita, action: sendMessage, target: dan, context: {messageType: image}, expect: {allowed: true}}")


def test_a_failing_suite_exits_4_and_prints_expected_actual_and_explanation(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    policies = make_policies(tmp_path, FAILING)
    examples = policies / "tests" / "example_roles.yaml"
    code, out, _ = check(capsys, str(policies))
    assert code == 4
    case_line = line_of(examples, "- name: restricted sends text only")
    check_line = line_of(examples, "messageType: image}, expect: {allowed: true}")
    assert f"FAIL tests/example_roles.yaml:{case_line}: suite 'example roles' case 'restricted sends text only': " \
           "1 of 4 checks failed\n" \
           f"  check #2 (line {check_line})\n" \
           "    request:     uid=rita action=sendMessage target=dan context.messageType='image'\n" \
           "    expected:    allowed=true\n" \
           "    actual:      allowed=false code=ERR_PERMISSION_DENIED layer=role\n" \
           "    explanation: role 'restricted' has sendMessage.allowedMessageTypes = [text] (from roles.yaml); " \
           "context.messageType is 'image'\n" in out
    assert out.splitlines()[-1] == f"tests: {SHIPPED_CASES - 1} passed, 1 failed ({SHIPPED_CASES} cases, " \
                                   f"{SHIPPED_CHECKS} checks in {SHIPPED_FILES} suite file(s))"


def test_a_policy_change_that_breaks_a_suite_is_caught(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The point of the suites: moderators allowed to delete groups fails the scope table."""
    policies = make_policies(tmp_path, ("scopes.yaml", "      addMembers: deny\n      deleteGroup: deny",
                                        "      addMembers: deny\n      deleteGroup: allow"))
    code, out, _ = check(capsys, str(policies))
    assert code == 4
    assert "case 'moderator may not deleteGroup': 1 of 1 checks failed" in out
    assert "actual:      allowed=true code=none layer=scope" in out


# -- JSON and JUnit --------------------------------------------------------------------------------
def test_json_for_an_invalid_policy(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    policies = make_policies(tmp_path, ("roles.yaml", "      createGroup: deny\n      blockUser",
                                        "      createGroup: maybe\n      blockUser"))
    code, out, _ = check(capsys, str(policies), "--format", "json")
    assert code == 3
    assert json.loads(out) == {
        "problems": [{"file": "roles.yaml", "line": line_of(policies / "roles.yaml", "createGroup: maybe"),
                      "message": "role support: createGroup must be one of allow, deny; got 'maybe'"}],
        "tests": {"passed": 0, "failed": 0, "cases": []}}


def test_json_for_a_failing_suite(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    policies = make_policies(tmp_path, FAILING)
    code, out, _ = check(capsys, str(policies), "--format", "json")
    report = json.loads(out)
    assert code == 4
    assert report["problems"] == []
    assert (report["tests"]["passed"], report["tests"]["failed"]) == (SHIPPED_CASES - 1, 1)
    [failed] = [c for c in report["tests"]["cases"] if not c["passed"]]
    assert (failed["suite"], failed["case"], failed["file"]) == ("example roles", "restricted sends text only",
                                                                 "tests/example_roles.yaml")
    [bad] = [c for c in failed["checks"] if not c["passed"]]
    assert bad["expected"] == {"allowed": True}
    assert bad["actual"]["allowed"] is False and bad["actual"]["code"] == "ERR_PERMISSION_DENIED"
    assert bad["explanation"] == bad["actual"]["reason"]
    assert "context.messageType is 'image'" in bad["explanation"]


def junit(path: Path) -> ET.Element:
    return ET.parse(path).getroot()


def test_junit_report_of_passing_suites(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    report = tmp_path / "out" / "junit.xml"
    assert check(capsys, "--junit", str(report))[0] == 0
    root = junit(report)
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures")) == (str(SHIPPED_CASES + 1), "0")
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert set(suites) >= {"policy files", "scope table", "clearance", "example roles"}
    assert suites["scope table"].get("file") == "tests/scope_table.yaml"
    assert not root.findall(".//failure")
    names = [c.get("name") for c in suites["clearance"].findall("testcase")]
    assert "the owner may act on admins" in names


def test_junit_report_of_a_failing_suite(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    policies = make_policies(tmp_path, FAILING)
    report = tmp_path / "junit.xml"
    assert check(capsys, str(policies), "--junit", str(report))[0] == 4
    root = junit(report)
    assert root.get("failures") == "1"
    [failure] = root.findall(".//failure")
    assert failure.get("message") == ("1 of 4 checks failed; first: uid=rita action=sendMessage target=dan "
                                      "context.messageType='image': expected allowed=true, got allowed=false "
                                      "code=ERR_PERMISSION_DENIED layer=role")
    assert "explanation: role 'restricted' has sendMessage.allowedMessageTypes" in (failure.text or "")


def test_junit_report_of_an_invalid_policy(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    policies = make_policies(tmp_path, ("roles.yaml", "restrictedFeatures: [u.joinGroup]",
                                        "restrictedFeatures: [u.teleport]"))
    report = tmp_path / "junit.xml"
    assert check(capsys, str(policies), "--junit", str(report))[0] == 3
    root = junit(report)
    [suite] = root.findall("testsuite")
    [failure] = suite.findall(".//failure")
    assert suite.get("name") == "policy files" and failure.get("message") == "1 problem(s)"
    assert failure.text == f"roles.yaml:{line_of(policies / 'roles.yaml', 'u.teleport')}: role restricted: " \
                           "unknown feature 'u.teleport'"


# -- usage -----------------------------------------------------------------------------------------
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = check(capsys, str(tmp_path / "nowhere"))
    assert code == 2
    assert "is not a folder" in err
    with pytest.raises(SystemExit) as info:
        main(["check", "--format", "yaml"])
    assert info.value.code == 2


@pytest.mark.integration  # starts a process
def test_the_installed_command_exits_with_the_codes(tmp_path: Path) -> None:
    policies = make_policies(tmp_path, ("roles.yaml", "restrictedFeatures: [u.joinGroup]",
                                        "restrictedFeatures: [u.teleport]"))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        env: dict[str, Any] = {"PATH": "/usr/bin:/bin"}
        return subprocess.run([sys.executable, "-m", "sidecar", "check", *args], capture_output=True, text=True,
                              timeout=60, cwd=str(tmp_path), env=env)
    bad = run(str(policies))
    assert bad.returncode == 3
    assert bad.stdout.splitlines()[0] == f"roles.yaml:{line_of(policies / 'roles.yaml', 'u.teleport')}: " \
                                         "role restricted: unknown feature 'u.teleport'"
    assert run().returncode == 0
