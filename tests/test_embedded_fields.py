"""Embedded.check validates its arguments without building a body (wire.check_of); the server
parses a body (wire.parse_check of the body Client sends). Both must accept and refuse exactly the
same fields, with the same 400, and decide alike: hostile ids (a trailing newline, non-ASCII, too
long, not a string), unknown actions, guids on app-wide actions, bad contexts and revisions."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.client import calls
from sidecar.client.embedded import Embedded
from sidecar.client.errors import SidecarError
from sidecar.client.pytest_plugin import seed_ops
from sidecar.errors import ChatAuthzError
from sidecar.wire import parse_check

IDS = st.one_of(st.sampled_from(["alice", "Alice", "bob", "g1", "g2", "nobody", "alice\n", "al ice", "\u212a",
                                 "", "x" * 100, "x" * 101]),
                st.text(max_size=6), st.integers(-2, 2), st.none(), st.booleans())
ACTIONS = st.one_of(st.sampled_from(["sendMessage", "createGroup", "kickMembers", "joinGroup", "changeScope",
                                     "getGroupDetails", "deleteGroup", "fly", "", "a" * 101]),
                    st.integers(0, 2), st.none())
FACT = st.one_of(st.sampled_from(["text", "image", "custom", "participant", "admin", "overlord"]),
                 st.booleans(), st.integers(-1, 3), st.text(max_size=3), st.lists(st.just("x"), max_size=1))
CONTEXTS = st.one_of(st.none(), st.dictionaries(st.sampled_from(["messageType", "newScope", "receiverType", "x"]),
                                                FACT, max_size=3), st.just([]), st.just("text"))
REVISIONS = st.one_of(st.none(), st.integers(-1, 3), st.sampled_from(["nope", "1", 2**60, True]))


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Embedded]:
    data_dir: Path = tmp_path_factory.mktemp("fields") / "data"
    seed_ops(data_dir, [{"op": "put_group", "guid": "g1", "owner": "alice"},
                        {"op": "put_member", "guid": "g1", "uid": "alice", "scope": "admin"},
                        {"op": "put_member", "guid": "g1", "uid": "bob", "scope": "moderator"},
                        {"op": "put_member", "guid": "g1", "uid": "carol", "scope": "participant"},
                        {"op": "put_user", "uid": "carol", "role": "restricted"},
                        {"op": "put_user", "uid": "erin", "role": "restricted"}])
    with Embedded(data_dir=data_dir) as emb:
        yield emb


def through_the_body(emb: Embedded, fields: tuple[Any, ...]) -> tuple[Any, ...]:
    """What a body with these fields gets from the server's parser, decided by the same sidecar."""
    uid, action, guid, target, context, at_least = fields
    try:
        body = emb.core.decide(*parse_check(calls.check_body(uid, action, guid, target, context, at_least)))
    except ChatAuthzError as exc:
        return ("error", exc.status, exc.code, exc.message, exc.details)
    return ("decision", body["allowed"], body.get("code"), body["reason"], body["layer"], body["role"],
            body.get("scope"), body["revision"])


def through_the_fields(emb: Embedded, fields: tuple[Any, ...]) -> tuple[Any, ...]:
    uid, action, guid, target, context, at_least = fields
    try:
        d = emb.check(uid, action, guid, target, context, at_least_revision=at_least)
    except SidecarError as exc:
        return ("error", exc.status, exc.code, exc.message, exc.details)
    assert d.token.endswith(f":{d.revision}") and d.decision_id
    return ("decision", d.allowed, d.code, d.reason, d.layer, d.role, d.scope, d.revision)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.tuples(IDS, ACTIONS, IDS, IDS, CONTEXTS, REVISIONS))
def test_embedded_fields_and_a_body_get_the_same_answer(embedded: Embedded, fields: tuple[Any, ...]) -> None:
    assert through_the_fields(embedded, fields) == through_the_body(embedded, fields)


def test_the_property_sees_both_decisions_and_errors(embedded: Embedded) -> None:
    """The strategies reach allows, denials and 400s (else the property above proves little)."""
    seen = {through_the_fields(embedded, f)[:2] for f in [
        ("bob", "kickMembers", "g1", "carol", None, None), ("carol", "createGroup", None, None, None, None),
        ("alice\n", "createGroup", None, None, None, None)]}
    assert seen == {("decision", True), ("decision", False), ("error", 400)}


def test_an_app_that_edits_a_capabilities_answer_changes_no_later_answer(embedded: Embedded) -> None:
    """The sidecar remembers capabilities answers per revision; Embedded hands the app its own
    copy, so an app that edits what it got (to render it, say) cannot turn a denial into an allow."""
    first = embedded.capabilities("carol", "g1")
    assert first["actions"]["createGroup"]["allowed"] is False and first["actions"]["initiateCall"]["allowed"] is False
    first["actions"]["createGroup"]["allowed"] = True  # a group action's answer
    first["actions"]["initiateCall"].update(allowed=True, code=None)  # an app-wide one, shared by the role
    first["actions"]["kickMembers"]["targets"]["actsOn"].append("admin")
    first["actions"].pop("sendMessage")
    for uid in ("carol", "erin"):  # erin: restricted too, never asked before
        again = embedded.capabilities(uid, "g1")["actions"]
        assert again["createGroup"]["allowed"] is False and again["initiateCall"]["allowed"] is False
        assert again["initiateCall"]["code"] == "ERR_PERMISSION_DENIED" and "sendMessage" in again
        assert again["kickMembers"]["targets"] == {"actsOn": []}
