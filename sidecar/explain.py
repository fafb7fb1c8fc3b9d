"""Explains one decision layer by layer: each key looked at, its value and where it came from.

The Engine decides; this module only shows the inputs of that decision, read with the same
public helpers (rules.build_rules for the Casbin gates, rules.resolve_value for constraint
values), and marks the step that refused by matching the decision's layer and reason. Pure.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sidecar.engine import GROUP_RULES, AuthzRequest, Decision, Engine
from sidecar.policy import Action, PermissionDef, PolicySet
from sidecar.rules import build_rules, resolve_value
from sidecar.state import RuntimeState

ALLOWS, REFUSES, PASSES, UNRESTRICTED = "allows", "refuses", "passes", "unrestricted"


@dataclass(frozen=True)
class Step:
    layer: str    # role | membership | scope | clearance
    key: str      # what was looked at
    value: str    # its value
    source: str   # where the value came from
    verdict: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"layer": self.layer, "key": self.key, "value": self.value, "source": self.source,
                "verdict": self.verdict}


def explain(engine: Engine, request: AuthzRequest, state: RuntimeState) -> tuple[Decision, list[Step]]:
    """The engine's decision and the steps that led to it (up to the one that refused)."""
    decision = engine.decide(request, state)
    steps = _Explainer(engine.policy, request, state, decision).steps()
    if not decision.allowed and not any(step.verdict == REFUSES for step in steps):
        # Never show a denial without the step that refused it (the engine's reason is the truth).
        steps.append(Step(decision.layer, decision.code or "decision", "deny", decision.reason, REFUSES))
    return decision, steps


class _Explainer:
    def __init__(self, policy: PolicySet, request: AuthzRequest, state: RuntimeState, decision: Decision) -> None:
        self.policy, self.request, self.state, self.decision = policy, request, state, decision
        self.action: Action = policy.actions[request.action]
        self.rules = build_rules(policy, state)
        self.out: list[Step] = []

    def steps(self) -> list[Step]:
        layers = (self._role, self._membership, self._scope, self._clearance)
        for layer in layers:
            if not layer() or (self.out and self.out[-1].verdict == REFUSES):
                break
        return self.out

    def add(self, step: Step) -> None:
        self.out.append(step)

    def refused_here(self, *layers: str) -> bool:
        return not self.decision.allowed and self.decision.layer in layers

    # -- layers: each returns False when the decision goes no further ----------------------
    def _role(self) -> bool:
        uid, role = self.request.uid, self.decision.role
        assigned = "assigned at runtime" if uid in self.state.users else "never given a role, so default"
        defined = self._role_source(role)
        self.add(Step("role", f"role of {uid}", role, f"{assigned}; role {defined}",
                      REFUSES if defined == "missing" else ""))
        if defined == "missing":
            return False
        self._gate("role", role, "*")  # a restricted feature is a deny line of its own
        if self.out[-1].verdict != REFUSES:
            self._constraints(self.action.role_constraints, "role", role, None)
        return True

    def _membership(self) -> bool:
        guid = self.request.guid
        if not guid:
            return False
        rule = GROUP_RULES.get(self.action.name)
        if rule is not None:  # a group action no scope key gates: the engine's rule is the step
            refused = self.refused_here("membership", "clearance")
            self.add(Step("membership", f"{self.action.name} in {guid}", rule, f"group {guid}: "
                          + self.decision.reason.removeprefix("allowed: ").rsplit("; ", 1)[-1],
                          REFUSES if refused else PASSES))
            return False
        uid = self.request.uid
        if self.state.owners.get(guid) == uid:
            self.add(Step("membership", f"owner of {guid}", uid, f"group {guid}", "may do anything in the group"))
            return self.action.target_required
        if self.state.is_banned(guid, uid):
            self.add(Step("membership", f"bans of {guid}", uid, f"group {guid}", REFUSES))
            return False
        scope = self.state.scope_of(guid, uid)
        self.add(Step("membership", f"scope of {uid} in {guid}", scope or "not a member", f"members of {guid}",
                      REFUSES if scope is None else ""))
        return scope is not None

    def _scope(self) -> bool:
        scope = self.decision.scope
        if scope is None or scope == "owner":
            return True
        guid = self.request.guid or ""
        if self.action.scope_key:
            self._gate("scope", scope, guid)
        else:
            self.add(Step("scope", self.action.name, "allow", "no scope key gates it", ALLOWS))
        if self.out[-1].verdict != REFUSES:
            self._constraints(self.action.scope_constraints, "scope", scope, guid)
        return True

    def _clearance(self) -> bool:
        if not self.action.target_required:
            return False
        guid, target = self.request.guid or "", self.request.target or ""
        ranks = {name: s.rank for name, s in self.policy.scopes.items()}
        actor = self.decision.scope or ""
        if self.action.name == "addMembers":
            target_scope = str(self.request.context.get("newScope") or "participant")
            where = "context.newScope" if "newScope" in self.request.context else "new members join as participant"
        elif self.state.owners.get(guid) == target:
            target_scope, where = "owner", f"owner of {guid}"
        else:
            target_scope = self.state.scope_of(guid, target) or "not a member"
            where = f"members of {guid}"
        shown = f"{target_scope} (rank {ranks[target_scope]})" if target_scope in ranks else target_scope
        actor_rank = "above every scope" if actor == "owner" else f"rank {ranks.get(actor, '?')}"
        verdict = REFUSES if self.refused_here("clearance") else PASSES
        self.add(Step("clearance", f"target {target}", shown, f"{where}; actor is {actor} ({actor_rank})", verdict))
        return True

    # -- helpers ---------------------------------------------------------------------------
    def _gate(self, layer: str, sub: str, dom: str) -> None:
        """The first policy line that matches, as Casbin's priority effect picks it."""
        obj = self.action.name
        for rule in self.rules:
            if rule[1] == layer and rule[2] in (sub, "*") and rule[3] in (dom, "*") and rule[4] == obj:
                effect, source = rule[5], rule[6]
                break
        else:
            effect, source = "deny", "no policy line"
        if source == "group override":
            source = f"group override of {dom}"
        self.add(Step(layer, obj, effect, source, ALLOWS if effect == "allow" else REFUSES))

    def _constraints(self, defs: tuple[PermissionDef, ...], layer: str, subject: str, guid: str | None) -> None:
        for defn in defs:
            value, source = resolve_value(self.policy, self.state, layer, subject, guid, defn.key)
            if value is None or value == "all" or (defn.type == "allowDeny" and value == "allow"):
                self.add(Step(layer, defn.key, _show(value), source, UNRESTRICTED))
                continue
            refused = not self.decision.allowed and f"has {defn.key} = " in self.decision.reason
            self.add(Step(layer, defn.key, _show(value), f"{source}; {defn.fact} = {self._fact(defn)}",
                          REFUSES if refused else PASSES))
            if refused:
                return

    def _fact(self, defn: PermissionDef) -> str:
        name = defn.fact or ""
        kind, _, attribute = name.partition(".")
        request = self.request
        if kind == "context":
            if attribute in request.context:
                return repr(request.context[attribute])
            if attribute == "receiverType" and (request.guid or request.target):
                return repr("group" if request.guid else "user") + " (from guid/target)"
            return "not sent"
        if not request.target:
            return "no target"
        if attribute == "role":
            return repr(self.state.users.get(request.target, "default"))
        if self.action.name == "addMembers":
            return repr(request.context.get("newScope") or "participant")
        scope = self.state.scope_of(request.guid or "", request.target)
        return repr(scope) if scope else "not a member"

    def _role_source(self, role: str) -> str:
        in_file, at_runtime = role in self.policy.roles, role in self.state.roles
        if in_file:
            source = self.policy.roles[role].source or "roles.yaml"
            return f"from {source}, edited at runtime" if at_runtime else f"from {source}"
        return "created at runtime" if at_runtime else "missing"


def _show(value: Any) -> str:
    if value is None:
        return "null (unrestricted)"
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


def format_steps(steps: list[Step]) -> str:
    """One line per step: layer, key = value (from source) -> verdict."""
    width = max((len(s.layer) for s in steps), default=0)
    lines = []
    for step in steps:
        verdict = f" -> {step.verdict}" if step.verdict else ""
        lines.append(f"  {step.layer.ljust(width)}  {step.key} = {step.value}  (from {step.source}){verdict}")
    return "\n".join(lines)
