"""model.conf is the model the engine runs, not decoration: changing it changes decisions.

Pure: the three shipped policy texts plus a (modified) model text, through load_policy_texts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sidecar.engine import AuthzRequest, Decision, Engine
from sidecar.errors import PolicyError
from sidecar.policy import PolicySet, load_policy, load_policy_texts
from sidecar.state import Op, RuntimeState

REPO = Path(__file__).resolve().parents[1]
TEXTS = {name: (REPO / "policies" / name).read_text(encoding="utf-8")
         for name in ("catalogue.yaml", "roles.yaml", "scopes.yaml")}
MODEL = (REPO / "model.conf").read_text(encoding="utf-8")

DOMAIN_TERM = '(p.dom == r.dom || p.dom == "*")'
SUBJECT_TERM = '(p.sub == r.sub || p.sub == "*")'
SHIPPED_EFFECT = "e = priority(p.eft) || deny"


def model_with(old: str, new: str) -> str:
    assert old in MODEL, f"the shipped model.conf no longer contains {old!r}"
    return MODEL.replace(old, new, 1)


def policy(model_text: str = MODEL) -> PolicySet:
    return load_policy_texts(dict(TEXTS), model_text)


def decide(policy_set: PolicySet, ops: list[Op], uid: str, action: str, guid: str | None = None,
           target: str | None = None, **context: Any) -> Decision:
    state = RuntimeState()
    for op in ops:
        state.apply(op)
    return Engine(policy_set).decide(AuthzRequest(uid, action, guid, target, context), state)


GROUPS: list[Op] = [
    {"op": "put_group", "guid": "g1", "owner": "o1"}, {"op": "put_member", "guid": "g1", "uid": "o1", "scope": "admin"},
    {"op": "put_group", "guid": "g2", "owner": "o2"}, {"op": "put_member", "guid": "g2", "uid": "o2", "scope": "admin"},
    {"op": "put_member", "guid": "g1", "uid": "p", "scope": "participant"},
    {"op": "put_member", "guid": "g2", "uid": "p", "scope": "participant"},
    {"op": "set_scope_permissions", "guid": "g1", "scope": "participant", "values": {"editGroup": "allow"}},
]


def test_the_shipped_model_loads_from_disk_and_is_the_one_the_engine_runs() -> None:
    shipped = load_policy(REPO / "policies")
    assert shipped.model_text == MODEL
    assert shipped.content_hash == policy().content_hash
    assert DOMAIN_TERM in MODEL and SUBJECT_TERM in MODEL and SHIPPED_EFFECT in MODEL


def test_matcher_ignoring_domains_leaks_a_group_override_to_other_groups() -> None:
    shipped, no_domains = policy(), policy(model_with(f" && {DOMAIN_TERM}", ""))
    assert no_domains.content_hash != shipped.content_hash

    # shipped: participants may editGroup in g1 (override) but not in g2
    assert decide(shipped, GROUPS, "p", "editGroup", "g1").allowed is True
    in_g2 = decide(shipped, GROUPS, "p", "editGroup", "g2")
    assert in_g2.allowed is False and in_g2.layer == "scope" and "scopes.yaml" in in_g2.reason

    # the same files and state, a matcher without the domain term: g1's override leaks into g2
    assert decide(no_domains, GROUPS, "p", "editGroup", "g1").allowed is True
    leaked = decide(no_domains, GROUPS, "p", "editGroup", "g2")
    assert leaked.allowed is True, leaked
    assert "group override" in leaked.reason


def test_matcher_model_file_on_disk_is_used(tmp_path: Path) -> None:
    """load_policy(dir, model_path) reads the model from disk: a modified file changes decisions."""
    model = tmp_path / "model.conf"
    model.write_text(model_with(f" && {DOMAIN_TERM}", ""), encoding="utf-8")
    from_disk = load_policy(REPO / "policies", model)
    assert decide(from_disk, GROUPS, "p", "editGroup", "g2").allowed is True
    assert decide(load_policy(REPO / "policies"), GROUPS, "p", "editGroup", "g2").allowed is False


def test_matcher_without_the_wildcard_subject_drops_catalogue_defaults() -> None:
    shipped = policy()
    exact_subjects = policy(model_with(SUBJECT_TERM, "p.sub == r.sub"))
    assert decide(shipped, [], "u", "createGroup").allowed is True
    refused = decide(exact_subjects, [], "u", "createGroup")
    assert refused.allowed is False
    assert "no policy line" in refused.reason


def test_allow_override_effect_lets_a_catalogue_default_beat_a_file_deny() -> None:
    ops: list[Op] = [{"op": "put_user", "uid": "agent", "role": "support"}]
    shipped = policy()
    allow_override = policy(model_with(SHIPPED_EFFECT, "e = some(where (p.eft == allow))"))
    assert decide(shipped, ops, "agent", "createGroup").allowed is False
    assert decide(allow_override, ops, "agent", "createGroup").allowed is True


def test_deny_override_effect_lets_a_file_deny_beat_a_runtime_allow() -> None:
    ops: list[Op] = [{"op": "put_user", "uid": "agent", "role": "support"},
                     {"op": "set_role_permissions", "role": "support", "values": {"createGroup": "allow"}}]
    shipped = policy()
    deny_override = policy(model_with(SHIPPED_EFFECT, "e = !some(where (p.eft == deny))"))
    assert decide(shipped, ops, "agent", "createGroup").allowed is True
    assert decide(deny_override, ops, "agent", "createGroup").allowed is False


@pytest.mark.parametrize(("old", "new", "message"), [
    ("r = layer, sub, dom, obj", "r = sub, dom, obj", "model.conf:1: r must be defined as r = layer, sub, dom, obj"),
    ("p = priority, layer, sub, dom, obj, eft, source", "p = layer, sub, dom, obj, eft, source",
     "model.conf:1: p must be defined as p = priority, layer, sub, dom, obj, eft, source"),
    ("[matchers]", "[matcherz]", "model.conf:1: the model needs [policy_effect] and [matchers]"),
])
def test_model_missing_required_tokens_is_refused(old: str, new: str, message: str) -> None:
    with pytest.raises(PolicyError) as info:
        policy(model_with(old, new))
    assert message in info.value.problems, info.value.problems
    assert all(problem.startswith("model.conf:") for problem in info.value.problems), info.value.problems


def test_empty_model_is_refused_with_every_problem() -> None:
    with pytest.raises(PolicyError) as info:
        policy("")
    problems = info.value.problems
    assert len(problems) >= 2
    assert all(problem.startswith("model.conf:1: ") for problem in problems), problems
    assert any("r must be defined" in problem for problem in problems)
    assert any("p must be defined" in problem for problem in problems)


def test_unreadable_model_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy(REPO / "policies", tmp_path / "missing.conf")
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith("model.conf:1: cannot read")
