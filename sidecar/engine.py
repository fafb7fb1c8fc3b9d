"""The decision engine: one request + policy + runtime state -> Decision. Pure: no Flask, no store.

Order (product §1): role layer (Casbin gate, restricted features, constraint keys), then for
group actions membership and bans, the scope layer (Casbin gate with per-group overrides,
constraint keys), then clearance over the target. The first refusal is the answer.
Casbin answers only role/scope x action questions, cached by exactly those inputs and
rebuilt when the policy part of the state changes; users and memberships are dict lookups.
"""
from __future__ import annotations

import threading
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import casbin

from sidecar.errors import BadRequestError
from sidecar.policy import Action, PermissionDef, PolicySet
from sidecar.readset import ReadView
from sidecar.rules import build_rules, resolve_value
from sidecar.state import RuntimeState

OWNER = "owner"
DENIED = "ERR_PERMISSION_DENIED"
CLEARANCE_CODES = {"changeScope": "ERR_GROUP_NO_SCOPE_CLEARANCE"}
# Actions whose target may be outside the group: treated as the lowest scope.
OUTSIDER_TARGET_ACTIONS = ("ban", "unban")
NOT_FOUND = "ERR_GUID_NOT_FOUND"
# Group actions that no scope key gates (role layer keys, or extra actions): what of the group
# decides them once the role layer allows. Every other action without a scope key takes no group.
#   visitor  the group exists and the user is not banned from it (members and non-members)
#   joiner   ... and the user is not already a member
#   creator  the group does not exist yet
#   owner    the user owns the group
#   admin / moderator  the user owns the group or is a member of at least that scope
GROUP_RULES = {"getGroupDetails": "visitor", "joinGroup": "joiner", "createGroup": "creator",
               "transferOwnership": "owner", "massMemberOperate": "admin", "deleteGroupMessages": "moderator"}
RANK_CODES = {"admin": "ERR_GROUP_NO_ADMIN_SCOPE", "moderator": "ERR_GROUP_NO_MODERATOR_SCOPE"}
_MISSING = object()
Constraint = tuple[PermissionDef, Any, str]         # key, its value, where it comes from
ALLOWS, REFUSES, PASSES, UNRESTRICTED, SKIPPED = "allows", "refuses", "passes", "unrestricted", "skipped"


class LayerAnswer(NamedTuple):
    """One layer's gate and constraint values for (layer, subject, domain, action); cached."""
    allowed: bool
    source: str                       # where the deciding policy line comes from
    active: tuple[Constraint, ...]    # constraint keys with a value that restricts
    allows: str                       # the reason when the layer allows
    rule: tuple[str, ...] | None      # the Casbin line enforce_ex matched (None: no gate or no line)
    unrestricted: tuple[Constraint, ...]


class Step(NamedTuple):
    """One thing the engine looked at, recorded where it decided (the trace behind --explain)."""
    layer: str    # role | membership | scope | clearance
    key: str      # what was looked at
    value: str    # its value
    source: str   # where the value came from (and the fact it was checked against)
    verdict: str  # allows | refuses | passes | unrestricted | skipped
    code: str | None = None  # on the refusing step: the decision's code
    rule: str = ""           # on a gate step: the Casbin policy line that matched

    def to_dict(self) -> dict[str, str]:
        body = {"layer": self.layer, "key": self.key, "value": self.value, "source": self.source,
                "verdict": self.verdict}
        if self.code:
            body["code"] = self.code
        if self.rule:
            body["rule"] = self.rule
        return body


Trace = list[Step]


_NO_FACTS: Mapping[str, Any] = MappingProxyType({})


class AuthzRequest(NamedTuple):  # NamedTuples: built on every request, several times cheaper than dataclasses
    uid: str
    action: str
    guid: str | None = None
    target: str | None = None
    context: Mapping[str, Any] = _NO_FACTS


class Decision(NamedTuple):
    allowed: bool
    reason: str
    layer: str
    role: str
    code: str | None = None
    scope: str | None = None
    revision: int = 0
    policy_hash: str = ""

    def to_dict(self, with_state: bool = True) -> dict[str, Any]:
        """The API's decision body (with_state: and the revision and policy hash it was made at)."""
        if self.code:
            body = {"allowed": self.allowed, "code": self.code, "reason": self.reason, "layer": self.layer,
                    "role": self.role}
        else:
            body = {"allowed": self.allowed, "reason": self.reason, "layer": self.layer, "role": self.role}
        if self.scope:
            body["scope"] = self.scope
        if with_state:
            body["revision"] = self.revision
            body["policyHash"] = self.policy_hash
        return body


_new_decision = tuple.__new__  # Decision(...) builds a tuple of all 8 fields in half the time: every decision's


class _Refusal(Exception):
    """A denial, with what the refusing step shows: the key looked at, its value and source."""

    def __init__(self, layer: str, code: str, reason: str, key: str = "", value: str = "deny",
                 source: str = "", rule: tuple[str, ...] | None = None,
                 shown: tuple[Any, ...] | None = None) -> None:
        super().__init__(reason)
        self.layer, self.code, self.reason = layer, code, reason
        self._shown = (key, value, source, rule)
        self._lazy = shown  # (function, *args) -> (key, value, source): formatted only for a trace

    @property
    def step(self) -> Step:
        """The refusing step of a trace (built only when one is asked for)."""
        key, value, source, rule = self._shown
        if self._lazy is not None:
            key, value, source = self._lazy[0](*self._lazy[1:])
        return Step(self.layer, key or self.code, value, source or self.reason, REFUSES, self.code,
                    _rule_text(rule))


class Engine:
    """Decides requests against one PolicySet; safe to share between threads."""

    def __init__(self, policy: PolicySet) -> None:
        self.policy = policy
        self._ranks = {name: scope.rank for name, scope in policy.scopes.items()}
        self._vocabulary = fact_vocabulary(policy)
        actions = policy.actions.values()
        self._needs_guid = frozenset(a.name for a in actions if (a.scope_key and not a.role_key)
                                     or GROUP_RULES.get(a.name) in ("owner", "admin", "moderator"))
        self._takes_group = frozenset(a.name for a in actions if takes_group(a))
        self._targets: dict[tuple[Any, ...], dict[str, list[str]]] = {}  # target_scopes answers, per compile
        self._lock = threading.Lock()
        self._compiled_for: tuple[RuntimeState, int] | None = None  # holds the state: ids get reused
        self._enforcer: casbin.Enforcer | None = None
        self._answers: dict[tuple[str, str, str, str], LayerAnswer] = {}

    def validate(self, request: AuthzRequest) -> Action:
        """The request's action, or a 400 for what the caller got wrong."""
        action = self.policy.actions.get(request.action)
        if action is None:
            raise BadRequestError.field("action", f"unknown action {request.action!r}; "
                                        "see the catalogue for the actions the sidecar knows")
        if request.guid:
            if action.name not in self._takes_group:
                raise BadRequestError.field("guid", f"{action.name} takes no group: send guid only with group "
                                            "actions, never to have it ignored")
        elif action.name in self._needs_guid:
            raise BadRequestError.field("guid", f"{action.name} is a group action: guid is required")
        if action.target_required and not request.target:
            raise BadRequestError.field("target", f"{action.name} acts on a member: target is required")
        if request.context:
            self.validate_context(request.context)
        if action.name == "changeScope" and request.context.get("newScope") is None:
            raise BadRequestError.field("context.newScope", "changeScope needs the new scope")
        return action

    def decide(self, request: AuthzRequest, state: RuntimeState, trace: Trace | None = None) -> Decision:
        """The decision; with a trace list, each step is appended where it is decided (the
        refusing step, if any, last: it is the decision's layer and code by construction)."""
        action = self.validate(request)
        role = state.role_of(request.uid)
        scope: str | None = None
        try:
            if role not in self.policy.roles and role not in state.roles:
                raise _Refusal("role", DENIED, f"user {request.uid!r} holds role {role!r}, which no longer exists",
                               f"role of {request.uid}", role, _role_origin(self.policy, state, request.uid, role))
            if trace is not None:
                trace.append(Step("role", f"role of {request.uid}", role,
                                  _role_origin(self.policy, state, request.uid, role), PASSES))
            role_reason = self._role_layer(action, request, state, role, trace)
            if not request.guid:
                return self._allow(state, role, None, "role", role_reason)
            rule = GROUP_RULES.get(action.name)
            if rule is not None:
                scope, group_reason = self._group_rule(rule, action, request, state)
                if trace is not None:
                    trace.append(Step("membership", f"{action.name} in {request.guid}", rule,
                                      f"group {request.guid}: {group_reason}", PASSES))
                return self._allow(state, role, scope, "membership", f"{role_reason}; {group_reason}")
            scope = self._membership(request, state, trace)
            if scope == OWNER and action.name == "leaveGroup":
                raise _Refusal("membership", "ERR_GROUP_NO_CLEARANCE", f"{request.uid!r} owns group "
                               f"{request.guid!r}; the owner may not leave until ownership is transferred",
                               f"owner of {request.guid}", request.uid, f"group {request.guid}")
            if scope == OWNER:
                if action.target_required:
                    target_scope = _target_scope(action, request, state)  # self-action, non-member, same scope
                    if trace is not None:
                        self._trace_target(trace, request, state, OWNER, target_scope)
                return self._allow(state, role, scope, "scope", f"{role_reason}; {request.uid!r} "
                                   f"owns group {request.guid!r} and may do anything in it")
            scope_reason = self._scope_layer(action, request, state, scope, trace)
            return self._allow(state, role, scope, "scope", f"{role_reason}; {scope_reason}")
        except _Refusal as refusal:
            if trace is not None:
                trace.append(refusal.step)
            return _new_decision(Decision, (False, refusal.reason, refusal.layer, role, refusal.code, scope,
                                            state.revision, self.policy.content_hash))

    def _allow(self, state: RuntimeState, role: str, scope: str | None, layer: str, reason: str) -> Decision:
        return _new_decision(Decision, (True, "allowed: " + reason, layer, role, None, scope, state.revision,
                                        self.policy.content_hash))

    # -- layers ----------------------------------------------------------------------------
    def _role_layer(self, action: Action, request: AuthzRequest, state: RuntimeState, role: str,
                    trace: Trace | None) -> str:
        answer = self._layer(state, action, "role", role, "*")
        allowed, source, active, allows, rule, _ = answer
        if not allowed:
            if source.startswith("restricted feature"):
                feature, _, origin = source.removeprefix("restricted feature ").partition(" (")
                reason = (f"role {role!r} has the feature {feature} restricted, which gates "
                          f"{action.name} (from {origin.rstrip(')')})")
            else:
                reason = f"role {role!r} denies {action.name} ({action.name} = deny, from {source})"
            raise _Refusal("role", DENIED, reason, action.name, "deny", source, rule)
        if trace is not None:
            trace.append(Step("role", action.name, "allow", source, ALLOWS, None, _rule_text(rule)))
        if active or trace is not None:
            self._constraints(answer, request, state, "role", role, None, DENIED, None, trace)
        return allows

    def _group_rule(self, rule: str, action: Action, request: AuthzRequest,
                    state: RuntimeState) -> tuple[str | None, str]:
        """A group action without a scope key (GROUP_RULES): (the user's scope, why it passes)."""
        guid, uid = request.guid or "", request.uid
        key, where = f"{action.name} in {guid}", f"group {guid}"
        if rule == "creator":
            if state.owner_of(guid) is not None:
                raise _Refusal("membership", "ERR_GUID_ALREADY_EXISTS", f"group {guid!r} already exists; "
                               f"{action.name} names a group that does not exist yet", key, rule, where)
            return None, f"group {guid!r} does not exist yet"
        owner_uid = state.owner_of(guid)
        if owner_uid is None:
            raise _Refusal("membership", NOT_FOUND, f"group {guid!r} does not exist", key, rule, where)
        owner = owner_uid == uid
        if rule == "owner" and not owner:
            raise _Refusal("membership", "ERR_GROUP_NO_CLEARANCE", f"only the owner of group {guid!r} "
                           f"({owner_uid!r}) may {action.name}", key, rule, where)
        if request.target is not None and request.target == uid:
            raise _Refusal("clearance", "ERR_GROUP_NO_SELF_ACTION", f"{uid!r} may not {action.name} themselves",
                           f"target {uid}", "the actor", where)
        if rule == "owner":
            if request.target is not None and state.is_banned(guid, request.target):
                raise _Refusal("clearance", "ERR_BANNED_GROUPMEMBER", f"{request.target!r} is banned from group "
                               f"{guid!r}; unban them before making them the owner", f"target {request.target}",
                               "banned", f"bans of {guid}")
            return OWNER, f"{uid!r} owns group {guid!r}"
        if owner:
            if rule == "joiner":
                raise _Refusal("membership", "ERR_ALREADY_JOINED", f"{uid!r} owns group {guid!r} and is "
                               "already a member", key, rule, where)
            return OWNER, f"{uid!r} owns group {guid!r}"
        if state.is_banned(guid, uid):
            raise _Refusal("membership", "ERR_BANNED_GROUPMEMBER", f"{uid!r} is banned from group {guid!r}; "
                           "an admin or moderator must unban them first", f"bans of {guid}", uid, where)
        scope = state.scope_of(guid, uid)
        if rule == "visitor":
            return scope, f"group {guid!r} exists and {uid!r} is not banned from it"
        if rule == "joiner":
            if scope is not None:
                raise _Refusal("membership", "ERR_ALREADY_JOINED", f"{uid!r} is already a member of "
                               f"group {guid!r} (as {scope})", f"scope of {uid} in {guid}", scope, where)
            return None, f"{uid!r} may join group {guid!r}: not a member and not banned"
        if scope is None:
            raise _Refusal("membership", "ERR_GROUP_NOT_JOINED", f"{uid!r} is not a member of group {guid!r}; "
                           "add them to the group first", f"scope of {uid} in {guid}", "not a member", where)
        if self._ranks[scope] < self._ranks[rule]:
            raise _Refusal("membership", RANK_CODES[rule], f"{action.name} needs the {rule} scope or above "
                           f"in group {guid!r}; {uid!r} is {scope}", f"scope of {uid} in {guid}", scope, where)
        return scope, f"{uid!r} is {scope} in group {guid!r}, at least {rule}"

    def _membership(self, request: AuthzRequest, state: RuntimeState, trace: Trace | None) -> str:
        guid, uid = request.guid or "", request.uid
        owner = state.owner_of(guid)
        if owner is None:
            raise _Refusal("membership", NOT_FOUND, f"group {guid!r} does not exist", f"group {guid}",
                           "does not exist", "the store's groups")
        where = f"group {guid}"
        if owner == uid:
            if trace is not None:
                trace.append(Step("membership", f"owner of {guid}", uid, f"{where}: the owner may do anything "
                                  "in it", PASSES))
            return OWNER
        if state.is_banned(guid, uid):
            raise _Refusal("membership", "ERR_BANNED_GROUPMEMBER", f"{uid!r} is banned from group {guid!r}; "
                           "an admin or moderator must unban them first", f"bans of {guid}", uid, where)
        scope = state.scope_of(guid, uid)
        if scope is None:
            raise _Refusal("membership", "ERR_GROUP_NOT_JOINED", f"{uid!r} is not a member of group {guid!r}; "
                           "add them to the group first", f"scope of {uid} in {guid}", "not a member",
                           f"members of {guid}")
        if trace is not None:
            trace.append(Step("membership", f"scope of {uid} in {guid}", scope, f"members of {guid}", PASSES))
        return scope

    def _scope_layer(self, action: Action, request: AuthzRequest, state: RuntimeState, scope: str,
                     trace: Trace | None) -> str:
        guid = request.guid or ""
        overridden = scope in state.overrides.get(guid, {})
        answer = self._layer(state, action, "scope", scope, guid if overridden else "*")
        allowed, source, active, allows, rule, _ = answer
        if not allowed:
            where = f"group {guid!r}" if source == "group override" else source
            raise _Refusal("scope", DENIED, f"scope {scope!r} in group {guid!r} may not {action.name} "
                           f"({action.name} = deny, from {where})", action.name, "deny",
                           _gate_source(source, guid), rule)
        if trace is not None:
            trace.append(Step("scope", action.name, "allow", _gate_source(source, guid), ALLOWS, None,
                              _rule_text(rule)))
        target_scope = _target_scope(action, request, state) if action.target_required else None
        if active or trace is not None:
            clearance = CLEARANCE_CODES.get(action.name, "ERR_GROUP_NO_CLEARANCE")
            self._constraints(answer, request, state, "scope", scope, guid, clearance, target_scope, trace)
        if target_scope is not None:
            self._clearance(action, request, state, scope, target_scope)
            if trace is not None:
                self._trace_target(trace, request, state, scope, target_scope)
        return allows

    def _clearance(self, action: Action, request: AuthzRequest, state: RuntimeState, scope: str,
                   target_scope: str) -> None:
        code = CLEARANCE_CODES.get(action.name, "ERR_GROUP_NO_CLEARANCE")
        guid, target = request.guid or "", request.target or ""
        ranks = self._ranks
        if state.owner_of(guid) == target:
            raise self._refuse_target(code, request, scope, "owner", f"{target!r} owns group {guid!r}; "
                                      f"nobody may {action.name} the owner")
        if action.name == "addMembers":
            # Adding grants a scope: it may not rank above the actor's (an admin may add admins).
            if ranks[target_scope] > ranks[scope]:
                raise self._refuse_target(code, request, scope, target_scope, f"scope {scope!r} may not add "
                                          f"a member as {target_scope!r}: the new scope may not rank above "
                                          "the actor's")
            return
        if ranks[scope] <= ranks[target_scope]:
            raise self._refuse_target(code, request, scope, target_scope, f"scope {scope!r} may not "
                                      f"{action.name} a member whose scope is {target_scope!r}: only a higher "
                                      "scope may act on a member")
        if action.name == "changeScope":
            new_scope = request.context["newScope"]
            if ranks[new_scope] > ranks[scope]:
                raise self._refuse_target(code, request, scope, target_scope, f"scope {scope!r} may not give "
                                          f"anyone the scope {new_scope!r}: the new scope may not rank above "
                                          "the actor's")

    def _refuse_target(self, code: str, request: AuthzRequest, scope: str, target_scope: str,
                       reason: str) -> _Refusal:
        return _Refusal("clearance", code, reason, shown=(self._target_shown, request, scope, target_scope))

    def _target_shown(self, request: AuthzRequest, scope: str, target_scope: str) -> tuple[str, str, str]:
        shown = target_scope if target_scope == OWNER else f"{target_scope} (rank {self._ranks[target_scope]})"
        return (f"target {request.target}", shown,
                f"members of {request.guid}; actor is {scope} (rank {self._ranks[scope]})")

    def _trace_target(self, trace: Trace, request: AuthzRequest, state: RuntimeState, scope: str,
                      target_scope: str) -> None:
        guid = request.guid or ""
        if request.action == "addMembers":
            where = "context.newScope" if "newScope" in request.context else "new members join as participant"
        else:
            where = f"members of {guid}" if state.scope_of(guid, request.target or "") else \
                f"not a member of {guid}: treated as participant"
        actor = "above every scope" if scope == OWNER else f"rank {self._ranks[scope]}"
        trace.append(Step("clearance", f"target {request.target}", f"{target_scope} (rank {self._ranks[target_scope]})",
                          f"{where}; actor is {scope} ({actor})", PASSES))

    def _constraints(self, answer: LayerAnswer, request: AuthzRequest, state: RuntimeState, layer: str,
                     subject: str, guid: str | None, code: str, target_scope: str | None,
                     trace: Trace | None) -> None:
        if trace is not None:
            for defn, value, source in answer.unrestricted:
                trace.append(Step(layer, defn.key, _step_value(value), source, UNRESTRICTED))
        for defn, value, source in answer.active:
            skipped = self._not_applicable(defn, request, state, target_scope) if defn.when else None
            problem = None if skipped else self._violation(defn, value, request, state, target_scope)
            if problem:
                who = f"role {subject!r}" if layer == "role" else f"scope {subject!r} in group {guid!r}"
                on_target = defn.fact == "target.scope"
                raise _Refusal("clearance" if on_target else layer, code if on_target else DENIED,
                               f"{who} has {defn.key} = {_show(value)} (from {source}); {problem}",
                               shown=(self._constraint_shown, defn, value, source, request, state, target_scope))
            if trace is not None:
                checked = f"{source}; {skipped or self._fact_text(defn, request, state, target_scope)}"
                trace.append(Step(layer, defn.key, _step_value(value), checked, SKIPPED if skipped else PASSES))

    def _constraint_shown(self, defn: PermissionDef, value: Any, source: str, request: AuthzRequest,
                          state: RuntimeState, target_scope: str | None) -> tuple[str, str, str]:
        return defn.key, _step_value(value), f"{source}; {self._fact_text(defn, request, state, target_scope)}"

    def _not_applicable(self, defn: PermissionDef, request: AuthzRequest, state: RuntimeState,
                        target_scope: str | None) -> str | None:
        """Why a constraint with a `when` condition does not apply here ("fact = value"), or None.
        Skipped only for a value the catalogue knows for that fact and the condition does not
        name: "Custom", 1 or "x" is no reason to skip a constraint (fail closed)."""
        for fact, values in defn.when.items():
            seen = _fact(fact, request, state, self.policy, target_scope)
            known = self._vocabulary.get(fact)
            if seen is not _MISSING and seen not in values and (known is None or seen in known):
                return f"{fact} = {seen!r}, which its condition does not name"
        return None

    def _violation(self, defn: PermissionDef, value: Any, request: AuthzRequest, state: RuntimeState,
                   target_scope: str | None) -> str | None:
        assert defn.fact is not None
        seen = _fact(defn.fact, request, state, self.policy, target_scope)
        if seen is _MISSING:
            if defn.fact.startswith("target."):
                return f"send target (the uid acted on) so that its {defn.fact[7:]} can be checked"
            return f"send {defn.fact} so that it can be checked"
        if defn.type == "mode":
            return None if seen is True else f"{defn.fact} is {_show(seen)}, not true"
        if defn.type == "allowDeny":  # passes on exactly false: "true", 1 or "no" are not false
            return None if seen is False else f"{defn.fact} is {_show(seen)}, not false"
        return None if seen in value else f"{defn.fact} is {_show(seen)}"

    def _fact_text(self, defn: PermissionDef, request: AuthzRequest, state: RuntimeState,
                   target_scope: str | None) -> str:
        seen = _fact(defn.fact or "", request, state, self.policy, target_scope)
        shown = "not sent" if seen is _MISSING else repr(seen)
        if (defn.fact == "context.receiverType" and seen is not _MISSING
                and "receiverType" not in request.context):
            shown += " (from guid/target)"
        return f"{defn.fact} = {shown}"

    # -- what applies beyond one decision (capabilities) --------------------------------------
    def constraints(self, request: AuthzRequest, decision: Decision, state: RuntimeState) -> list[dict[str, Any]]:
        """The constraint values that restrict the request's action for the decision's role and
        scope (say sendMessage.allowedMessageTypes = [text]), each with its layer and source."""
        action = self.policy.actions[request.action]
        if not action.role_constraints and not action.scope_constraints:
            return []
        answers = [("role", self._layer(state, action, "role", decision.role, "*"))] if action.role_constraints else []
        scope, guid = decision.scope, request.guid or ""
        if scope is not None and scope != OWNER and guid and action.scope_constraints:
            overridden = scope in state.overrides.get(guid, {})
            answers.append(("scope", self._layer(state, action, "scope", scope, guid if overridden else "*")))
        return [{"layer": layer, "key": defn.key, "value": value, "source": source}
                for layer, answer in answers for defn, value, source in answer.active]

    def validate_context(self, context: Mapping[str, Any]) -> None:
        """A 400 for facts no request may carry (whatever its action)."""
        new_scope = context.get("newScope")
        if new_scope is not None and new_scope not in self.policy.scopes:
            raise BadRequestError.field("context.newScope", f"must be one of {', '.join(self.policy.scopes)}")

    @property
    def group_actions(self) -> frozenset[str]:
        """The actions that take a group (any other refuses a guid)."""
        return self._takes_group

    def target_scopes(self, request: AuthzRequest, state: RuntimeState, scope: str | None) -> dict[str, list[str]]:
        """See _target_scopes; the same inputs answer from a cache, rebuilt with the Casbin lines."""
        guid = request.guid or ""
        role = state.role_of(request.uid)
        try:
            key = (request.action, role, scope, guid if scope in state.overrides.get(guid, {}) else bool(guid),
                   tuple(sorted(request.context.items())))
            hash(key)
        except TypeError:
            return self._target_scopes(request, state, scope)
        if self._compiled_for_state(state):
            known = self._targets.get(key)
            if known is not None:
                return known
        answer = self._target_scopes(request, state, scope)
        if self._compiled_for_state(state):
            self._targets[key] = answer
        return answer

    def _target_scopes(self, request: AuthzRequest, state: RuntimeState, scope: str | None) -> dict[str, list[str]]:
        """For an action on a member, asked without a target: the scopes of the members the user
        may act on ("actsOn") and, for addMembers and changeScope, the scopes they may give
        ("grants"), as decide() would judge a target of each scope (the role layer, then the scope
        gate, constraint and clearance steps; the target's own facts, such as a ban, still decide
        each request)."""
        action = self.policy.actions[request.action]
        scopes = list(self.policy.scopes)
        grants = action.name in ("addMembers", "changeScope")
        nothing: dict[str, list[str]] = {"actsOn": [], "grants": []} if grants else {"actsOn": []}
        role = state.role_of(request.uid)
        probe = AuthzRequest(request.uid, action.name, request.guid, " ", request.context)  # no member has this id
        try:
            if scope is None or not request.guid or (role not in self.policy.roles and role not in state.roles):
                return nothing
            self._role_layer(action, probe, state, role, None)
        except _Refusal:
            return nothing
        if scope == OWNER:
            return {"actsOn": scopes, "grants": scopes} if grants else {"actsOn": scopes}
        guid = request.guid
        overridden = scope in state.overrides.get(guid, {})
        answer = self._layer(state, action, "scope", scope, guid if overridden else "*")
        acts: set[str] = set()
        gives: set[str] = set()
        if answer.allowed:
            code = CLEARANCE_CODES.get(action.name, "ERR_GROUP_NO_CLEARANCE")
            for new in (scopes if grants else [None]):
                context = {**request.context, "newScope": new} if new else request.context
                probe = AuthzRequest(request.uid, action.name, guid, " ", context)
                for target_scope in ([new] if action.name == "addMembers" else scopes):
                    assert target_scope is not None
                    try:
                        self._constraints(answer, probe, state, "scope", scope, guid, code, target_scope, None)
                        self._clearance(action, probe, state, scope, target_scope)
                    except _Refusal:
                        continue
                    acts.add(target_scope)
                    if new:
                        gives.add(new)
        ordered = [name for name in scopes if name in acts]
        if not grants:
            return {"actsOn": ordered}
        return {"actsOn": [] if action.name == "addMembers" else ordered,
                "grants": [name for name in scopes if name in gives]}

    # -- Casbin ----------------------------------------------------------------------------
    def _layer(self, state: RuntimeState, action: Action, layer: str, sub: str, dom: str) -> LayerAnswer:
        """The gate (Casbin) and the constraint values for sub in dom: cached by exactly those
        inputs, rebuilt when the policy part of the state changes."""
        key = (layer, sub, dom, action.name)
        generation = state.policy_generation  # a write plan's ReadView notes a read of the role policy here
        view: Any = state  # underlying(state), inline: lines of other groups never match dom, so the
        base = view._state if type(view) is ReadView else state  # lines are compiled from the state itself
        compiled = self._compiled_for  # _compiled_for_state, inline: this is every decision's path
        if compiled is not None and compiled[0] is base and compiled[1] == generation:
            cached = self._answers.get(key)
            if cached is not None:
                return cached
        with self._lock:
            if not self._compiled_for_state(base):
                self._compile(base)
            where, matched = "no scope key gates it", None
            if layer == "role" or action.scope_key:
                allowed, rule = self._enforcer.enforce_ex(*key)  # type: ignore[union-attr]
                matched = tuple(rule) if rule else None
                gate = (bool(allowed), rule[6] if rule else "no policy line")
                where = f"group override in group {rule[3]!r}" if gate[1] == "group override" else gate[1]
            else:
                gate = (True, where)
            defs = action.role_constraints if layer == "role" else action.scope_constraints
            guid = None if dom == "*" else dom
            active: list[Constraint] = []
            unrestricted: list[Constraint] = []
            for defn in defs:
                value, source = resolve_value(self.policy, state, layer, sub, guid, defn.key)
                restricts = not (value is None or value == "all" or (defn.type == "allowDeny" and value == "allow"))
                (active if restricts else unrestricted).append((defn, value, source))
            who = f"role {sub!r}" if layer == "role" else f"scope {sub!r}"
            answer = LayerAnswer(*gate, tuple(active), f"{who} allows {action.name} (from {where})", matched,
                                 tuple(unrestricted))
            self._answers[key] = answer
            return answer

    def _compiled_for_state(self, state: RuntimeState) -> bool:
        compiled = self._compiled_for
        return compiled is not None and compiled[0] is state and compiled[1] == state.policy_generation

    def _compile(self, state: RuntimeState) -> None:
        enforcer = casbin.Enforcer(casbin.Enforcer.new_model(text=self.policy.model_text))
        rules = build_rules(self.policy, state)
        if rules:
            enforcer.add_policies(rules)
        self._enforcer, self._answers, self._targets = enforcer, {}, {}
        self._compiled_for = (state, state.policy_generation)


def _role_origin(policy: PolicySet, state: RuntimeState, uid: str, role: str) -> str:
    assigned = "assigned at runtime" if state.assigned(uid) else "never given a role, so default"
    in_file, at_runtime = role in policy.roles, role in state.roles
    if in_file:
        source = policy.roles[role].source or "roles.yaml"
        defined = f"from {source}, edited at runtime" if at_runtime else f"from {source}"
    else:
        defined = "created at runtime" if at_runtime else "missing"
    return f"{assigned}; role {defined}"


def _gate_source(source: str, guid: str) -> str:
    return f"group override of {guid}" if source == "group override" else source


def _rule_text(rule: tuple[str, ...] | None) -> str:
    """A Casbin policy line as model.conf reads it: p, priority, layer, sub, dom, obj, eft, source."""
    return "p, " + ", ".join(rule) if rule else ""


def fact_vocabulary(policy: PolicySet) -> dict[str, frozenset[str]]:
    """The values the catalogue knows for each fact with a closed list (context.messageType ...)."""
    vocabulary: dict[str, set[str]] = {}
    for defn in (*policy.role_keys.values(), *policy.scope_keys.values()):
        if defn.fact and defn.values and defn.type == "stringArray":
            vocabulary.setdefault(defn.fact, set()).update(defn.values)
    return {fact: frozenset(values) for fact, values in vocabulary.items()}


def takes_group(action: Action) -> bool:
    """May a request of this action name a group (scope layer, or a GROUP_RULES action)?"""
    return action.scope_key or bool(action.scope_constraints) or action.name in GROUP_RULES


def _target_scope(action: Action, request: AuthzRequest, state: RuntimeState) -> str:
    """The target's scope for this action, after the target facts the write path refuses on."""
    guid, target, name = request.guid or "", request.target or "", action.name
    refuse = _target_refusal
    if target == request.uid:
        raise refuse(request, "ERR_GROUP_NO_SELF_ACTION", "the actor", f"{request.uid!r} may not {name} themselves")
    banned = state.is_banned(guid, target)
    if name == "addMembers":
        if banned:
            raise refuse(request, "ERR_BANNED_GROUPMEMBER", "banned", f"{target!r} is banned from group {guid!r}; "
                         "unban them before adding them")
        current = state.scope_of(guid, target)
        if current is not None:
            raise refuse(request, "ERR_ALREADY_JOINED", current, f"{target!r} is already a member of group {guid!r} "
                         f"(as {current})")
        return str(request.context.get("newScope") or "participant")
    if name == "ban" and banned:
        raise refuse(request, "ERR_ALREADY_BANNED", "banned", f"{target!r} is already banned from group {guid!r}")
    if name == "unban" and not banned:
        raise refuse(request, "ERR_NOT_A_BANNED_USER", "not banned", f"{target!r} is not banned from group {guid!r}")
    scope = state.scope_of(guid, target)
    if scope is None and action.name in OUTSIDER_TARGET_ACTIONS:
        return "participant"
    if scope is None:
        raise refuse(request, "ERR_NOT_A_MEMBER", "not a member", f"{request.target!r} is not a member of group "
                     f"{request.guid!r}")
    if action.name == "changeScope" and request.context.get("newScope") == scope:
        raise refuse(request, "ERR_SAME_SCOPE", scope, f"{request.target!r} is already {scope}")
    return scope


def _target_refusal(request: AuthzRequest, code: str, value: str, reason: str) -> _Refusal:
    return _Refusal("clearance", code, reason, shown=(_target_fact, request, value))


def _target_fact(request: AuthzRequest, value: str) -> tuple[str, str, str]:
    return f"target {request.target}", value, f"members and bans of {request.guid}"


def _fact(name: str, request: AuthzRequest, state: RuntimeState, policy: PolicySet,
          target_scope: str | None) -> Any:
    """A fact of the request; target_scope when the caller has already worked it out."""
    kind, _, attribute = name.partition(".")
    if kind == "context":
        if attribute in request.context:
            return request.context[attribute]
        if attribute == "receiverType" and (request.guid or request.target):
            return "group" if request.guid else "user"
        return _MISSING
    if not request.target:
        return _MISSING
    if attribute == "role":
        return state.role_of(request.target)
    if target_scope is not None:
        return target_scope
    action = policy.actions[request.action]
    try:
        return _target_scope(action, request, state)
    except _Refusal:
        return _MISSING


def _show(value: Any) -> str:
    """A value in a reason: lists bracketed, the rest as Python shows them."""
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return repr(value)


def _step_value(value: Any) -> str:
    """A value in a trace step: null (unrestricted), [a, b], or the value itself."""
    if value is None:
        return "null (unrestricted)"
    return _show(value) if isinstance(value, list) else str(value)
