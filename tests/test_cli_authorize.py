"""`chatauthz authorize`: one decision from a world file, the embedded store or Redis, with
--explain showing each layer, key, value and source. Exit 0 allowed, 1 denied, 2 usage, 3 invalid
policy. In-process through sidecar.cli.main; Redis is a real redis-server on a free port."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from redis_support import RedisServer

from sidecar.cli import main
from sidecar.state import Op
from sidecar.stores.redisstore import RedisStore
from sidecar.stores.sqlite import SQLiteStore

REPO = Path(__file__).resolve().parents[1]

WORLD = """\
world:
  users: {rita: restricted, sam: support}
  groups:
    g1:
      owner: own
      members: {rita: participant, mod: moderator, admin: admin}
      overrides: {participant: {sendMessage.allowedMessageTypes: [text]}}
"""


def authorize(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["authorize", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def world(tmp_path: Path) -> str:
    path = tmp_path / "world.yaml"
    path.write_text(WORLD, encoding="utf-8")
    return str(path)


def seed(store: Any, ops: list[Op]) -> None:
    store.write(lambda: ops, "test")
    store.close()


RUNTIME_OPS: list[Op] = [
    {"op": "put_role", "role": "vip", "record": {"role": "vip", "name": "VIP", "createdAt": 1}},
    {"op": "set_role_permissions", "role": "vip", "values": {"sendMessage.allowedMessageTypes": ["text", "image"]}},
    {"op": "set_role_permissions", "role": "support", "values": {"createGroup": "allow"}},
    {"op": "put_user", "uid": "val", "role": "vip"},
    {"op": "put_user", "uid": "sam", "role": "support"},
]


# -- world files -------------------------------------------------------------------------------
def test_allowed_exits_0(capsys: pytest.CaptureFixture[str], world: str) -> None:
    code, out, err = authorize(capsys, "--world", world, "--uid", "rita", "--action", "sendMessage",
                               "--target", "sam", "--context", "messageType=text")
    assert code == 0, err
    assert out.splitlines() == [
        "allowed at layer role, role restricted",
        "reason: allowed: role 'restricted' allows sendMessage (from catalogue)"]


def test_denied_exits_1_with_code_and_reason(capsys: pytest.CaptureFixture[str], world: str) -> None:
    code, out, _ = authorize(capsys, "--world", world, "--uid", "rita", "--action", "joinGroup",
                             "--context", "groupType=public")
    assert code == 1
    assert out.splitlines() == [
        "denied (ERR_PERMISSION_DENIED) at layer role, role restricted",
        "reason: role 'restricted' has the feature u.joinGroup restricted, which gates joinGroup (from roles.yaml)"]


def test_explain_shows_each_layer_key_value_and_source(capsys: pytest.CaptureFixture[str], world: str) -> None:
    code, out, _ = authorize(capsys, "--world", world, "--uid", "mod", "--action", "kickMembers",
                             "--guid", "g1", "--target", "admin", "--explain")
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == "denied (ERR_GROUP_NO_CLEARANCE) at layer clearance, role default, scope moderator"
    assert lines[2] == "explanation:"
    steps = [" ".join(line.split()) for line in lines[3:]]
    assert steps[0].startswith("role role of mod = default (from never given a role, so default; role from roles.yaml")
    assert steps[0].endswith("-> passes")
    assert steps[1:] == [
        "role kickMembers = allow (from catalogue) -> allows",
        "matched: p, 40, role, *, *, kickMembers, allow, catalogue",  # the Casbin line enforce_ex matched
        "membership scope of mod in g1 = moderator (from members of g1) -> passes",
        "scope kickMembers = allow (from scopes.yaml) -> allows",
        "matched: p, 30, scope, moderator, *, kickMembers, allow, scopes.yaml",
        "clearance kickMembers.allowedScopes = [participant] (from scopes.yaml; target.scope = 'admin') "
        "-> refuses (ERR_GROUP_NO_CLEARANCE)",
    ]


def test_explain_names_a_group_override_and_a_constraint_value(capsys: pytest.CaptureFixture[str],
                                                                world: str) -> None:
    code, out, _ = authorize(capsys, "--world", world, "--uid", "mod", "--action", "sendMessage", "--guid", "g1",
                             "--context", "messageType=image", "--explain", "--format", "json")
    assert code == 0
    body = json.loads(out)
    assert body["allowed"] is True and body["scope"] == "moderator"
    scope_steps = [s for s in body["explanation"] if s["layer"] == "scope"]
    assert scope_steps[0] == {"layer": "scope", "key": "sendMessage", "value": "allow", "source": "catalogue",
                              "verdict": "allows", "rule": "p, 40, scope, *, *, sendMessage, allow, catalogue"}
    # the override is the participant's, so the moderator's value comes from the catalogue
    types = next(s for s in scope_steps if s["key"] == "sendMessage.allowedMessageTypes")
    assert (types["source"], types["verdict"]) == ("catalogue", "unrestricted")

    code, out, _ = authorize(capsys, "--world", world, "--uid", "rita", "--action", "sendMessage", "--guid", "g1",
                             "--context", "messageType=image", "--explain", "--format", "json")
    body = json.loads(out)
    assert code == 1 and body["layer"] == "role"  # rita's role refuses images before her scope is asked
    refusing = body["explanation"][-1]
    assert refusing == {"layer": "role", "key": "sendMessage.allowedMessageTypes", "value": "[text]",
                        "source": "roles.yaml; context.messageType = 'image'", "verdict": "refuses",
                        "code": "ERR_PERMISSION_DENIED"}


def test_json_output_is_the_decision(capsys: pytest.CaptureFixture[str], world: str) -> None:
    code, out, _ = authorize(capsys, "--world", world, "--uid", "sam", "--action", "createGroup",
                             "--format", "json")
    assert code == 1
    body = json.loads(out)
    assert {k: body[k] for k in ("allowed", "code", "layer", "role")} == {
        "allowed": False, "code": "ERR_PERMISSION_DENIED", "layer": "role", "role": "support"}
    assert "explanation" not in body


def test_context_values_are_typed(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text("roles:\n  friendly: {permissions: {sendMessage.mode: friends}}\nusers: {f: friendly}\n")
    args = ["--world", str(path), "--uid", "f", "--action", "sendMessage", "--target", "x"]
    assert authorize(capsys, *args, "--context", "isFriend=true")[0] == 0
    code, out, _ = authorize(capsys, *args, "--context", "isFriend=false")
    assert code == 1 and "context.isFriend is False, not true" in out


# -- the embedded store and Redis --------------------------------------------------------------
def test_data_dir_reads_the_embedded_store(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    seed(SQLiteStore(tmp_path / "chatauthz.sqlite3"), RUNTIME_OPS)
    code, out, _ = authorize(capsys, "--data-dir", str(tmp_path), "--uid", "sam", "--action", "createGroup",
                             "--explain")
    assert code == 0
    assert "role  createGroup = allow  (from runtime) -> allows" in out
    code, out, _ = authorize(capsys, "--data-dir", str(tmp_path), "--uid", "val", "--action", "sendMessage",
                             "--target", "sam", "--context", "messageType=video", "--format", "json")
    body = json.loads(out)
    assert code == 1 and body["revision"] == 1 and body["role"] == "vip"
    assert "from runtime" in body["reason"]


def test_a_missing_store_is_a_usage_error_and_is_not_created(capsys: pytest.CaptureFixture[str],
                                                             tmp_path: Path) -> None:
    code, _, err = authorize(capsys, "--data-dir", str(tmp_path / "none"), "--uid", "u", "--action", "listUsers")
    assert code == 2
    assert "no embedded store at" in err
    assert not (tmp_path / "none").exists()


def test_redis_url_reads_the_shared_state(capsys: pytest.CaptureFixture[str], module_redis: RedisServer) -> None:
    seed(RedisStore(module_redis.url, "cli-auth:"), RUNTIME_OPS)
    args = ["--redis-url", module_redis.url, "--redis-prefix", "cli-auth:", "--uid", "sam", "--action", "createGroup"]
    code, out, _ = authorize(capsys, *args)
    assert code == 0 and "(from runtime)" in out
    # another prefix is another app: sam has no role there
    code, out, _ = authorize(capsys, *args[:3], "other:", *args[4:])
    assert code == 0 and "role default" in out


def test_an_unreachable_redis_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    from redis_support import free_port
    code, _, err = authorize(capsys, "--redis-url", f"redis://127.0.0.1:{free_port()}/0", "--uid", "u",
                             "--action", "listUsers")
    assert code == 2
    assert "cannot read the runtime state from Redis" in err


# -- usage and policy errors -------------------------------------------------------------------
@pytest.mark.parametrize(("args", "message"), [
    (["--uid", "u", "--action", "fly"], "unknown action 'fly'"),
    (["--uid", "u", "--action", "kickMembers", "--guid", "g1"], "target is required"),
    (["--uid", "u", "--action", "listUsers", "--context", "oops"], "--context takes KEY=VALUE"),
])
def test_bad_requests_exit_2(capsys: pytest.CaptureFixture[str], world: str, args: list[str], message: str) -> None:
    code, out, err = authorize(capsys, "--world", world, *args)
    assert code == 2 and out == ""
    assert message in err


def test_a_broken_world_exits_2_with_every_problem(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text("users: {u: ghost}\ngroups:\n  g: {owner: o, members: {m: boss}}\n")
    code, _, err = authorize(capsys, "--world", str(path), "--uid", "u", "--action", "listUsers")
    assert code == 2
    assert err.splitlines()[1:] == [
        "w.yaml:1: users: u has role 'ghost', which does not exist (define it under world.roles or in roles.yaml)",
        "w.yaml:3: group g: member m has unknown scope 'boss'; scopes are admin, moderator, participant"]


def test_store_options_are_exclusive(capsys: pytest.CaptureFixture[str], world: str, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        main(["authorize", "--world", world, "--data-dir", str(tmp_path), "--uid", "u", "--action", "listUsers"])
    assert info.value.code == 2


def test_an_invalid_policy_exits_3(capsys: pytest.CaptureFixture[str], world: str, tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    shutil.copy(REPO / "model.conf", tmp_path / "model.conf")
    roles = policies / "roles.yaml"
    roles.write_text(roles.read_text().replace("createGroup: deny", "createGroup: maybe", 1))
    code, _, err = authorize(capsys, "--world", world, "--policies", str(policies), "--uid", "u",
                             "--action", "listUsers")
    assert code == 3
    assert "role support: createGroup must be one of allow, deny; got 'maybe'" in err
