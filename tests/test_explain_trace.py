"""`--explain` is the engine's own trace, so it cannot contradict the decision.

Property (hypothesis): for random requests (every action of the catalogue, random uid, guid,
target and context) over random worlds (tests/test_differential_authorize_write.world_ops), and
for the shipped model and every model variant the tests use (tests/test_unit_model):
- tracing never changes the decision;
- a denial has exactly one refusing step, the last, with the decision's layer and code; an
  allow has none;
- every gate step agrees with Casbin itself: a raw enforcer over the same policy lines
  (rules.build_rules) answers the step's verdict, and the rule the step names is a line of it.
The drift the old re-deriving explainer had (a matcher without the domain term: the engine
allows `p editGroup g2`, the explanation refused) is a regression test. Pure.
"""
from __future__ import annotations

import random
from typing import Any

import casbin
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_differential_authorize_write import world_ops
from test_unit_model import DOMAIN_TERM, GROUPS, SHIPPED_EFFECT, SUBJECT_TERM, model_with, policy

from sidecar.engine import ALLOWS, REFUSES, AuthzRequest, Engine, Step
from sidecar.errors import ChatAuthzError
from sidecar.explain import explain, format_steps
from sidecar.policy import PolicySet
from sidecar.rules import build_rules
from sidecar.state import RuntimeState

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

VARIANTS: dict[str, PolicySet] = {
    "shipped": policy(),
    "no-domains": policy(model_with(f" && {DOMAIN_TERM}", "")),
    "exact-subjects": policy(model_with(SUBJECT_TERM, "p.sub == r.sub")),
    "allow-override": policy(model_with(SHIPPED_EFFECT, "e = some(where (p.eft == allow))")),
    "deny-override": policy(model_with(SHIPPED_EFFECT, "e = !some(where (p.eft == deny))")),
}
ENGINES = {name: Engine(policy_set) for name, policy_set in VARIANTS.items()}
ACTIONS = sorted(VARIANTS["shipped"].actions)
CONTEXTS: list[dict[str, Any]] = [
    {}, {"messageType": "text"}, {"messageType": "image"}, {"messageType": "video", "messageCategory": "message"},
    {"newScope": "admin"}, {"newScope": "participant"}, {"newScope": "moderator"}, {"isFriend": True},
    {"isFriend": False}, {"receiverType": "user"}, {"messageCategory": "custom", "customType": "poll"}]


def build(rng: random.Random) -> tuple[RuntimeState, list[str], list[str]]:
    ops, uids, guids = world_ops(rng)
    state = RuntimeState()
    for op in ops:
        state.apply(op)
    return state, uids, guids


def enforcer_for(policy_set: PolicySet, state: RuntimeState) -> casbin.Enforcer:
    enforcer = casbin.Enforcer(casbin.Enforcer.new_model(text=policy_set.model_text))
    enforcer.add_policies(build_rules(policy_set, state))
    return enforcer


def check_trace(engine: Engine, request: AuthzRequest, state: RuntimeState, enforcer: casbin.Enforcer) -> bool:
    """The properties of the module docstring for one request; False when it is a 400."""
    try:
        plain = engine.decide(request, state)
    except ChatAuthzError:
        with pytest.raises(ChatAuthzError):
            explain(engine, request, state)
        return False
    decision, steps = explain(engine, request, state)
    shown = f"{request}\n{decision}\n{format_steps(steps)}"
    assert decision == plain, shown
    refusing = [step for step in steps if step.verdict == REFUSES]
    if decision.allowed:
        assert refusing == [], shown
    else:
        assert refusing == [steps[-1]], shown
        assert (refusing[0].layer, refusing[0].code) == (decision.layer, decision.code), shown
    for step in steps:
        if step.rule:  # a gate step: Casbin over the same lines gives the same verdict
            layer, sub, dom = gate_inputs(step, request, state, decision.role, decision.scope)
            assert enforcer.enforce(layer, sub, dom, request.action) is (step.verdict == ALLOWS), shown
            assert step.rule.removeprefix("p, ").split(", ") in enforcer.get_policy(), shown
    return True


def gate_inputs(step: Step, request: AuthzRequest, state: RuntimeState, role: str,
                scope: str | None) -> tuple[str, str, str]:
    if step.layer == "role":
        return "role", role, "*"
    guid = request.guid or ""
    assert scope is not None
    return "scope", scope, guid if scope in state.overrides.get(guid, {}) else "*"


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(world=st.randoms(use_true_random=False), picks=st.lists(st.integers(0, 10**6), min_size=60, max_size=60),
       variant=st.sampled_from(sorted(VARIANTS)))
def test_the_trace_is_the_decision(world: random.Random, picks: list[int], variant: str) -> None:
    state, uids, guids = build(world)
    engine = ENGINES[variant]
    enforcer = enforcer_for(VARIANTS[variant], state)
    decided = 0
    for i in range(0, len(picks), 6):
        uid, action, guid, target, context, shape = picks[i:i + 6]
        request = AuthzRequest(
            uids[uid % len(uids)], ACTIONS[action % len(ACTIONS)],
            guids[guid % len(guids)] if shape % 3 else None,
            uids[target % len(uids)] if shape % 2 else None, CONTEXTS[context % len(CONTEXTS)])
        decided += check_trace(engine, request, state, enforcer)


def test_every_verdict_and_layer_is_reached() -> None:
    """The property above is not vacuous: over seeded worlds, allows and refusals at every layer."""
    seen: set[tuple[bool, str]] = set()
    rng = random.Random(11)
    for _ in range(30):
        state, uids, guids = build(rng)
        engine, enforcer = ENGINES["shipped"], enforcer_for(VARIANTS["shipped"], state)
        for _ in range(80):
            request = AuthzRequest(rng.choice(uids), rng.choice(ACTIONS), rng.choice([None, *guids]),
                                   rng.choice([None, *uids]), rng.choice(CONTEXTS))
            if check_trace(engine, request, state, enforcer):
                decision = engine.decide(request, state)
                seen.add((decision.allowed, decision.layer))
    assert {(False, layer) for layer in ("role", "membership", "scope", "clearance")} <= seen, seen
    assert {(True, "role"), (True, "scope"), (True, "membership")} <= seen, seen


def test_a_matcher_without_domains_is_explained_as_the_engine_decides() -> None:
    """Regression: the old explainer scanned the lines itself and showed the shipped matcher's
    answer (`scope editGroup = deny -> refuses`) while the engine allowed."""
    state = RuntimeState()
    for op in GROUPS:
        state.apply(op)
    request = AuthzRequest("p", "editGroup", "g2")
    decision, steps = explain(ENGINES["no-domains"], request, state)
    assert decision.allowed is True
    gate = next(step for step in steps if step.layer == "scope" and step.key == "editGroup")
    assert (gate.value, gate.verdict) == ("allow", ALLOWS), format_steps(steps)
    assert gate.rule == "p, 20, scope, participant, g1, editGroup, allow, group override", gate
    assert not any(step.verdict == REFUSES for step in steps)
    # the shipped model refuses the same request, and says so at the same step
    decision, steps = explain(ENGINES["shipped"], request, state)
    assert decision.allowed is False and steps[-1].key == "editGroup" and steps[-1].verdict == REFUSES


def test_a_constraint_that_passes_is_never_shown_refusing() -> None:
    """Regression (found by the docs review): the old explainer matched "has <key> = " in the
    reason, so the role's allowedMessageTypes [text, image] was shown refusing an image that the
    group override [text] refused at the scope layer."""
    state = RuntimeState()
    for op in [{"op": "put_role", "role": "trainee", "record": {"role": "trainee", "name": "T", "createdAt": 0}},
               {"op": "set_role_permissions", "role": "trainee",
                "values": {"sendMessage.allowedMessageTypes": ["text", "image"]}},
               {"op": "put_user", "uid": "tina", "role": "trainee"}, {"op": "put_group", "guid": "g", "owner": "o"},
               {"op": "put_member", "guid": "g", "uid": "tina", "scope": "participant"},
               {"op": "set_scope_permissions", "guid": "g", "scope": "participant",
                "values": {"sendMessage.allowedMessageTypes": ["text"]}}]:
        state.apply(op)
    decision, steps = explain(ENGINES["shipped"], AuthzRequest("tina", "sendMessage", "g", None,
                                                               {"messageType": "image"}), state)
    assert decision.allowed is False and decision.layer == "scope", decision
    role_step = next(s for s in steps if s.layer == "role" and s.key == "sendMessage.allowedMessageTypes")
    assert role_step.verdict == "passes", format_steps(steps)
    assert (steps[-1].layer, steps[-1].key, steps[-1].verdict) == ("scope", "sendMessage.allowedMessageTypes",
                                                                   REFUSES), format_steps(steps)
