"""`chatauthz export`: the runtime roles (with their runtime values and restricted features) as a
drop-in roles.yaml, and the per-group overrides as a second document. The exported file, put in
place of roles.yaml in a copy of the policies, passes `chatauthz check` and decides as the
runtime state did."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from redis_support import RedisServer

from sidecar.cli import main
from sidecar.engine import AuthzRequest, Engine
from sidecar.policy import load_policy
from sidecar.state import Op, RuntimeState
from sidecar.stores.redisstore import RedisStore
from sidecar.stores.sqlite import SQLiteStore

REPO = Path(__file__).resolve().parents[1]

# Runtime changes that the shipped suites do not contradict.
RUNTIME_OPS: list[Op] = [
    {"op": "put_role", "role": "vip", "record": {"role": "vip", "name": "VIP", "description": "Paying customers",
                                                 "metadata": {"tier": 2, "perks": ["badge"]},
                                                 "settings": {"listUsers": "friendsOnly"}, "createdAt": 7}},
    {"op": "set_role_permissions", "role": "vip",
     "values": {"sendMessage.allowedReceiverRoles": ["support", "vip"], "createGroup.allowedGroupTypes": ["private"]}},
    {"op": "set_restricted_features", "role": "vip", "features": ["listCalls", "deleteCall"]},
    {"op": "set_role_permissions", "role": "support", "values": {"listUsers.allowedRoles": ["vip", "support"]}},
    {"op": "put_role", "role": "restricted", "record": {"role": "restricted", "name": "Restricted (edited)",
                                                        "createdAt": 0, "updatedAt": 9}},
    {"op": "set_restricted_features", "role": "restricted", "features": ["joinGroup", "createGroup"]},
    {"op": "set_role_permissions", "role": "restricted", "values": {"sendThreadedMessage.allowedMessageTypes": None}},
    {"op": "put_user", "uid": "val", "role": "vip"},
    {"op": "put_user", "uid": "sam", "role": "support"},
    {"op": "put_user", "uid": "rita", "role": "restricted"},
    {"op": "put_group", "guid": "g1", "owner": "own"},
    {"op": "put_member", "guid": "g1", "uid": "own", "scope": "admin"},
    {"op": "put_member", "guid": "g1", "uid": "val", "scope": "participant"},
    {"op": "set_scope_permissions", "guid": "g1", "scope": "participant",
     "values": {"sendMessage": "deny", "sendMessage.allowedMessageTypes": ["text"]}},
    {"op": "set_scope_permissions", "guid": "g1", "scope": "moderator", "values": {"kickMembers": "deny"}},
]


def seed(store: Any, ops: list[Op]) -> RuntimeState:
    store.write(lambda: ops, "test")
    state = store.load()
    store.close()
    return state  # type: ignore[no-any-return]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    seed(SQLiteStore(path / "chatauthz.sqlite3"), RUNTIME_OPS)
    return path


def export(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["export", *args])
    out, err = capsys.readouterr()
    return code, out, err


def copy_policies(tmp_path: Path) -> Path:
    policies = tmp_path / "repo" / "policies"
    shutil.copytree(REPO / "policies", policies)
    shutil.copy(REPO / "model.conf", policies.parent / "model.conf")
    return policies


# -- the documents -----------------------------------------------------------------------------
def test_stdout_holds_the_roles_then_the_group_overrides(capsys: pytest.CaptureFixture[str], data_dir: Path) -> None:
    code, out, _ = export(capsys, "--data-dir", str(data_dir))
    assert code == 0
    roles_doc, overrides_doc = yaml.safe_load_all(out)
    roles = roles_doc["roles"]
    assert roles_doc["version"] == 1
    assert list(roles) == ["default", "support", "restricted", "vip"]  # file order, then runtime roles
    assert roles["vip"] == {
        "name": "VIP", "description": "Paying customers", "metadata": {"tier": 2, "perks": ["badge"]},
        "settings": {"listUsers": "friendsOnly"},
        "permissions": {"sendMessage.allowedReceiverRoles": ["support", "vip"],
                        "createGroup.allowedGroupTypes": ["private"]},
        "restrictedFeatures": ["u.deleteCall", "u.listCalls"]}
    assert roles["support"]["permissions"] == {"createGroup": "deny", "blockUser": "deny",
                                               "listUsers.allowedRoles": ["vip", "support"]}
    assert roles["restricted"]["name"] == "Restricted (edited)"
    assert "description" not in roles["restricted"]  # the runtime record has none: it was unset
    assert roles["restricted"]["restrictedFeatures"] == ["u.createGroup", "u.joinGroup"]
    assert roles["restricted"]["permissions"]["sendThreadedMessage.allowedMessageTypes"] is None
    assert overrides_doc == {"version": 1, "groupOverrides": {"g1": {
        "moderator": {"kickMembers": "deny"},
        "participant": {"sendMessage": "deny", "sendMessage.allowedMessageTypes": ["text"]}}}}


def test_each_role_says_what_the_runtime_changed(capsys: pytest.CaptureFixture[str], data_dir: Path) -> None:
    out = export(capsys, "--data-dir", str(data_dir))[1]
    comments = [line.strip() for line in out.splitlines() if line.startswith("  # ")]
    assert comments == [
        "# default: roles.yaml, unchanged",
        "# support: roles.yaml, changed at runtime: permissions.listUsers.allowedRoles",
        "# restricted: roles.yaml, changed at runtime: name, description, "
        "permissions.sendThreadedMessage.allowedMessageTypes, restrictedFeatures",
        "# vip: created at runtime",
    ]
    assert f"from {data_dir / 'chatauthz.sqlite3'} at revision 1." in out.splitlines()[0]


def test_output_files(capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "out" / "roles.yaml"
    target.parent.mkdir()
    code, out, err = export(capsys, "--data-dir", str(data_dir), "-o", str(target))
    assert code == 0 and out == ""
    beside = tmp_path / "out" / "roles.group-overrides.yaml"
    assert err.strip() == f"chatauthz export: roles to {target}, group overrides to {beside} (revision 1)"
    assert "vip" in yaml.safe_load(target.read_text())["roles"]
    assert set(yaml.safe_load(beside.read_text())["groupOverrides"]) == {"g1"}
    elsewhere = tmp_path / "overrides.yaml"
    assert export(capsys, "--data-dir", str(data_dir), "-o", str(target), "--overrides", str(elsewhere))[0] == 0
    assert yaml.safe_load(elsewhere.read_text())["version"] == 1


def test_a_fresh_store_exports_the_files_roles(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    SQLiteStore(tmp_path / "chatauthz.sqlite3").close()
    code, out, _ = export(capsys, "--data-dir", str(tmp_path))
    roles_doc, overrides_doc = yaml.safe_load_all(out)
    shipped = yaml.safe_load((REPO / "policies" / "roles.yaml").read_text())
    assert code == 0
    assert roles_doc == shipped
    assert overrides_doc["groupOverrides"] == {}


def test_a_missing_store_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = export(capsys, "--data-dir", str(tmp_path / "nothing"))
    assert code == 2 and out == ""
    assert "no embedded store" in err


# -- round trip into git ----------------------------------------------------------------------
def test_the_exported_roles_file_passes_check_in_place_of_roles_yaml(
        capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path) -> None:
    policies = copy_policies(tmp_path)
    assert export(capsys, "--data-dir", str(data_dir), "-o", str(policies / "roles.yaml"))[0] == 0
    code, out = main(["check", str(policies)]), capsys.readouterr().out
    assert code == 0, out
    assert " passed, 0 failed (" in out.splitlines()[-1]


def test_the_exported_roles_decide_as_the_runtime_state_did(
        capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path) -> None:
    policies = copy_policies(tmp_path)
    export(capsys, "--data-dir", str(data_dir), "-o", str(policies / "roles.yaml"))
    before_policy = load_policy(REPO / "policies")
    after_policy = load_policy(policies)
    before = SQLiteStore(data_dir / "chatauthz.sqlite3").load()
    after = RuntimeState()  # the same users and groups, with no runtime role changes
    for op in RUNTIME_OPS:
        if op["op"] in ("put_user", "put_group", "put_member", "set_scope_permissions"):
            after.apply(op)
    requests = [AuthzRequest(uid, action, target=target, context=context)
                for uid in ("val", "sam", "rita", "nobody")
                for action, target, context in (
                    ("createGroup", None, {"groupType": "public"}), ("createGroup", None, {"groupType": "private"}),
                    ("joinGroup", None, {"groupType": "public"}), ("listCalls", None, {}),
                    ("deleteCall", None, {}), ("listUsers", "sam", {}), ("listUsers", "rita", {}),
                    ("sendMessage", "sam", {"messageType": "text"}), ("sendMessage", "rita", {"messageType": "text"}),
                    ("sendThreadedMessage", "sam", {"messageType": "video"}), ("blockUser", "val", {}))]
    requests.append(AuthzRequest("val", "sendMessage", "g1", context={"messageType": "text"}))
    for request in requests:
        old = Engine(before_policy).decide(request, before)
        new = Engine(after_policy).decide(request, after)
        assert (old.allowed, old.code, old.layer) == (new.allowed, new.code, new.layer), (request, old, new)
    assert {Engine(before_policy).decide(r, before).allowed for r in requests} == {True, False}


def test_a_runtime_change_that_breaks_a_suite_is_caught_by_check(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Moving "support may create groups" into git fails the example-roles suite (exit 4)."""
    data = tmp_path / "data"
    data.mkdir()
    seed(SQLiteStore(data / "chatauthz.sqlite3"),
         [{"op": "set_role_permissions", "role": "support", "values": {"createGroup": "allow"}}])
    policies = copy_policies(tmp_path)
    export(capsys, "--data-dir", str(data), "-o", str(policies / "roles.yaml"))
    code, out = main(["check", str(policies)]), capsys.readouterr().out
    assert code == 4
    assert "case 'support may not createGroup or blockUser': 1 of 3 checks failed" in out


# -- Redis ------------------------------------------------------------------------------------


def test_export_from_redis(capsys: pytest.CaptureFixture[str], module_redis: RedisServer) -> None:
    seed(RedisStore(module_redis.url, "cli-export:"), RUNTIME_OPS)
    code, out, _ = export(capsys, "--redis-url", module_redis.url, "--redis-prefix", "cli-export:")
    assert code == 0
    roles_doc, overrides_doc = yaml.safe_load_all(out)
    assert roles_doc["roles"]["vip"]["restrictedFeatures"] == ["u.deleteCall", "u.listCalls"]
    assert set(overrides_doc["groupOverrides"]) == {"g1"}
    assert f"Redis {module_redis.url} (prefix cli-export:)" in out.splitlines()[0]
