"""Embedded (the engine in the app's process) against the served sidecar: the same decisions on
every check of the policy suites (one data folder per distinct world, shared by a real server
and an Embedded), and writes through Embedded seen by the server and the other way round."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.client import BadRequest, Client, Decision, Forbidden, NotFound, PermissionDenied
from sidecar.client.embedded import Embedded
from sidecar.client.pytest_plugin import seed_ops
from sidecar.policy import load_policy
from sidecar.suites import Case, load_suites
from tests.conftest import TEST_API_KEY, Server, unique

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
POLICY = load_policy(REPO / "policies")
CASES, _ = load_suites(REPO / "policies" / "tests", POLICY)
STABLE = ("allowed", "code", "reason", "layer", "role", "scope")


def by_world() -> dict[str, list[Case]]:
    worlds: dict[str, list[Case]] = {}
    for case in CASES:
        worlds.setdefault(repr(case.ops), []).append(case)
    return worlds


def stable(decision: Decision) -> tuple[object, ...]:
    return tuple(getattr(decision, field) for field in STABLE)


def test_embedded_and_the_server_decide_every_suite_check_alike(tmp_path: Path) -> None:
    worlds = by_world()
    servers: list[Server] = []
    try:
        for number, cases in enumerate(worlds.values()):
            data_dir = tmp_path / f"w{number}" / "data"
            seed_ops(data_dir, cases[0].ops)
            servers.append(Server(data_dir, log_dir=tmp_path / f"w{number}" / "logs"))
        checked = 0
        for srv, cases in zip(servers, worlds.values(), strict=True):
            srv.start()
            with Client(srv.url, api_key=TEST_API_KEY, timeout=5.0) as client, \
                    Embedded(data_dir=srv.data_dir) as embedded:
                for case in cases:
                    items = [(c.request.uid, c.request.action, c.request.guid, c.request.target,
                              dict(c.request.context)) for c in case.checks]
                    served, local = client.check_many(items), embedded.check_many(items)
                    for check, one, other in zip(case.checks, served, local, strict=True):
                        assert isinstance(one, Decision) and isinstance(other, Decision), (case.id, one, other)
                        assert stable(one) == stable(other), (case.id, check.name)
                        assert one.revision == other.revision and one.token == other.token
                        expected = {k: getattr(one, k) for k in check.expect}
                        assert expected == dict(check.expect), (case.id, check.name, one)
                        single = embedded.check(*items[case.checks.index(check)])
                        assert stable(single) == stable(one)
                        checked += 1
            srv.stop()
        assert checked == sum(len(c.checks) for c in CASES)
    finally:
        for srv in servers:
            srv.stop()


@pytest.fixture
def pair(server: Server) -> Iterator[tuple[Client, Embedded]]:
    with Client(server.url, api_key=TEST_API_KEY, timeout=5.0) as client, Embedded(data_dir=server.data_dir) as emb:
        yield client, emb


def test_writes_through_embedded_and_the_server_are_seen_by_both(pair: tuple[Client, Embedded]) -> None:
    client, emb = pair
    guid, owner, mod, part = unique("g"), unique("own"), unique("mod"), unique("part")
    token = emb.create_group(guid, owner)
    assert token.data["owner"] == owner and emb.token == token
    added = emb.add_members(guid, moderators=[mod], participants=[part, "bad id!"])
    assert added.data["participants"]["bad id!"]["success"] is False
    assert client.check(mod, "kickMembers", guid, part, at_least_revision=added).allowed
    with pytest.raises(Forbidden) as refused:
        emb.kick(guid, owner, on_behalf_of=mod)
    assert refused.value.code == "ERR_GROUP_NO_CLEARANCE" and refused.value.status == 403
    kicked = emb.kick(guid, part, on_behalf_of=mod)
    assert client.check(part, "sendMessage", guid, context={"messageType": "text"},
                        at_least_revision=kicked).code == "ERR_GROUP_NOT_JOINED"
    client.set_role(part, "support")  # the server's write, read by Embedded from the same file
    assert emb.check(part, "createGroup").code == "ERR_PERMISSION_DENIED"
    emb.set_scope(guid, mod, "admin")
    assert emb.check(mod, "deleteGroup", guid).allowed
    emb.ban(guid, part)
    assert client.check(part, "joinGroup", guid).code == "ERR_BANNED_GROUPMEMBER"
    emb.unban(guid, part)
    emb.delete_group(guid)
    assert client.check(owner, "getGroupDetails", guid).code == "ERR_GUID_NOT_FOUND"


def test_embedded_errors_are_the_clients(pair: tuple[Client, Embedded]) -> None:
    client, emb = pair
    for caller in (client, emb):
        with pytest.raises(BadRequest) as bad:
            caller.check("alice", "fly")
        assert bad.value.details and "action" in bad.value.details
        with pytest.raises(NotFound):
            caller.delete_group(unique("none"))
        with pytest.raises(BadRequest):
            caller.set_scope(unique("none"), "bob", "overlord")
        with pytest.raises(PermissionDenied):
            caller.require("chatauthz-nobody", "sendMessage", unique("none"))
    results = emb.check_many([("alice", "createGroup"), ("alice", "fly")])
    assert isinstance(results[0], Decision) and isinstance(results[1], BadRequest)
    epoch = emb.check("alice", "createGroup").token.rpartition(":")[0]
    with pytest.raises(Exception) as ahead:
        emb.check("alice", "createGroup", at_least_revision=f"{epoch}:99999999")
    assert getattr(ahead.value, "code", None) == "ERR_REVISION_NOT_REACHED"


def test_capabilities_from_the_client_and_embedded_agree(pair: tuple[Client, Embedded]) -> None:
    client, emb = pair
    guid, owner, mod, part = unique("g"), unique("own"), unique("mod"), unique("part")
    client.create_group(guid, owner)
    client.add_members(guid, moderators=[mod], participants=[part])
    served, local = client.capabilities(mod, guid), emb.capabilities(mod, guid)
    assert served["actions"].keys() == local["actions"].keys() and "kickMembers" in served["actions"]
    for name, entry in served["actions"].items():
        assert {k: v for k, v in entry.items() if k != "decisionId"} == \
            {k: v for k, v in local["actions"][name].items() if k != "decisionId"}, name
    with pytest.raises(BadRequest):
        emb.capabilities("not an id!")

