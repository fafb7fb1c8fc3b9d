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
Constraint = tuple[PermissionDef, Any, str]         # key, its active value, where it comes from
# gate allowed, gate source, active constraints, the reason when the layer allows
LayerAnswer = tuple[bool, str, tuple[Constraint, ...], str]


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

    def to_dict(self) -> dict[str, Any]:
        if self.code:
            body = {"allowed": self.allowed, "code": self.code, "reason": self.reason, "layer": self.layer,
                    "role": self.role}
        else:
            body = {"allowed": self.allowed, "reason": self.reason, "layer": self.layer, "role": self.role}
        if self.scope:
            body["scope"] = self.scope
        body["revision"] = self.revision
        body["policyHash"] = self.policy_hash
        return body


class _Refusal(Exception):
    def __init__(self, layer: str, code: str, reason: str) -> None:
        super().__init__(reason)
        self.layer, self.code, self.reason = layer, code, reason


class Engine:
    """Decides requests against one PolicySet; safe to share between threads."""

    def __init__(self, policy: PolicySet) -> None:
        self.policy = policy
        self._ranks = {name: scope.rank for name, scope in policy.scopes.items()}
        self._vocabulary = fact_vocabulary(policy)
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
        _require_inputs(action, request, self.policy)
        return action

    def decide(self, request: AuthzRequest, state: RuntimeState) -> Decision:
        action = self.validate(request)
        role = state.users.get(request.uid, "default")
        scope: str | None = None
        try:
            if role not in self.policy.roles and role not in state.roles:
                raise _Refusal("role", DENIED, f"user {request.uid!r} holds role {role!r}, "
                               "which no longer exists")
            role_reason = self._role_layer(action, request, state, role)
            if not request.guid:
                return self._allow(state, role, None, "role", role_reason)
            rule = GROUP_RULES.get(action.name)
            if rule is not None:
                scope, group_reason = self._group_rule(rule, action, request, state)
                return self._allow(state, role, scope, "membership", f"{role_reason}; {group_reason}")
            scope = self._membership(request, state)
            if scope == OWNER and action.name == "leaveGroup":
                raise _Refusal("membership", "ERR_GROUP_NO_CLEARANCE", f"{request.uid!r} owns group "
                               f"{request.guid!r}; the owner may not leave until ownership is transferred")
            if scope == OWNER:
                if action.target_required:
                    _target_scope(action, request, state)  # self-action, non-member, same scope
                return self._allow(state, role, scope, "scope", f"{role_reason}; {request.uid!r} "
                                   f"owns group {request.guid!r} and may do anything in it")
            scope_reason = self._scope_layer(action, request, state, scope)
            return self._allow(state, role, scope, "scope", f"{role_reason}; {scope_reason}")
        except _Refusal as refusal:
            return Decision(False, refusal.reason, refusal.layer, role, refusal.code, scope,
                            state.revision, self.policy.content_hash)

    def _allow(self, state: RuntimeState, role: str, scope: str | None, layer: str, reason: str) -> Decision:
        return Decision(True, "allowed: " + reason, layer, role, None, scope, state.revision,
                        self.policy.content_hash)

    # -- layers ----------------------------------------------------------------------------
    def _role_layer(self, action: Action, request: AuthzRequest, state: RuntimeState, role: str) -> str:
        allowed, source, active, allows = self._layer(state, action, "role", role, "*")
        if not allowed:
            if source.startswith("restricted feature"):
                feature, _, origin = source.removeprefix("restricted feature ").partition(" (")
                reason = (f"role {role!r} has the feature {feature} restricted, which gates "
                          f"{action.name} (from {origin.rstrip(')')})")
            else:
                reason = f"role {role!r} denies {action.name} ({action.name} = deny, from {source})"
            raise _Refusal("role", DENIED, reason)
        if active:
            self._constraints(active, request, state, "role", role, None, DENIED, None)
        return allows

    def _group_rule(self, rule: str, action: Action, request: AuthzRequest,
                    state: RuntimeState) -> tuple[str | None, str]:
        """A group action without a scope key (GROUP_RULES): (the user's scope, why it passes)."""
        guid, uid = request.guid or "", request.uid
        if rule == "creator":
            if guid in state.owners:
                raise _Refusal("membership", "ERR_GUID_ALREADY_EXISTS", f"group {guid!r} already exists; "
                               f"{action.name} names a group that does not exist yet")
            return None, f"group {guid!r} does not exist yet"
        if guid not in state.owners:
            raise _Refusal("membership", NOT_FOUND, f"group {guid!r} does not exist")
        owner = state.owners[guid] == uid
        if rule == "owner" and not owner:
            raise _Refusal("membership", "ERR_GROUP_NO_CLEARANCE", f"only the owner of group {guid!r} "
                           f"({state.owners[guid]!r}) may {action.name}")
        if request.target is not None and request.target == uid:
            raise _Refusal("clearance", "ERR_GROUP_NO_SELF_ACTION", f"{uid!r} may not {action.name} themselves")
        if rule == "owner":
            return OWNER, f"{uid!r} owns group {guid!r}"
        if owner:
            if rule == "joiner":
                raise _Refusal("membership", "ERR_ALREADY_JOINED", f"{uid!r} owns group {guid!r} and is "
                               "already a member")
            return OWNER, f"{uid!r} owns group {guid!r}"
        if state.is_banned(guid, uid):
            raise _Refusal("membership", "ERR_BANNED_GROUPMEMBER",
                           f"{uid!r} is banned from group {guid!r}; an admin or moderator must unban them first")
        scope = state.scope_of(guid, uid)
        if rule == "visitor":
            return scope, f"group {guid!r} exists and {uid!r} is not banned from it"
        if rule == "joiner":
            if scope is not None:
                raise _Refusal("membership", "ERR_ALREADY_JOINED", f"{uid!r} is already a member of "
                               f"group {guid!r} (as {scope})")
            return None, f"{uid!r} may join group {guid!r}: not a member and not banned"
        if scope is None:
            raise _Refusal("membership", "ERR_GROUP_NOT_JOINED",
                           f"{uid!r} is not a member of group {guid!r}; add them to the group first")
        if self._ranks[scope] < self._ranks[rule]:
            raise _Refusal("membership", RANK_CODES[rule], f"{action.name} needs the {rule} scope or above "
                           f"in group {guid!r}; {uid!r} is {scope}")
        return scope, f"{uid!r} is {scope} in group {guid!r}, at least {rule}"

    def _membership(self, request: AuthzRequest, state: RuntimeState) -> str:
        guid, uid = request.guid or "", request.uid
        if guid not in state.owners:
            raise _Refusal("membership", NOT_FOUND, f"group {guid!r} does not exist")
        if state.owners.get(guid) == uid:
            return OWNER
        if state.is_banned(guid, uid):
            raise _Refusal("membership", "ERR_BANNED_GROUPMEMBER",
                           f"{uid!r} is banned from group {guid!r}; an admin or moderator must unban them first")
        scope = state.scope_of(guid, uid)
        if scope is None:
            raise _Refusal("membership", "ERR_GROUP_NOT_JOINED",
                           f"{uid!r} is not a member of group {guid!r}; add them to the group first")
        return scope

    def _scope_layer(self, action: Action, request: AuthzRequest, state: RuntimeState, scope: str) -> str:
        guid = request.guid or ""
        overridden = scope in state.overrides.get(guid, {})
        allowed, source, active, allows = self._layer(state, action, "scope", scope, guid if overridden else "*")
        if not allowed:
            where = f"group {guid!r}" if source == "group override" else source
            raise _Refusal("scope", DENIED, f"scope {scope!r} in group {guid!r} may not {action.name} "
                           f"({action.name} = deny, from {where})")
        target_scope = _target_scope(action, request, state) if action.target_required else None
        if active:
            clearance = CLEARANCE_CODES.get(action.name, "ERR_GROUP_NO_CLEARANCE")
            self._constraints(active, request, state, "scope", scope, guid, clearance, target_scope)
        if target_scope is not None:
            self._clearance(action, request, state, scope, target_scope)
        return allows

    def _clearance(self, action: Action, request: AuthzRequest, state: RuntimeState, scope: str,
                   target_scope: str) -> None:
        code = CLEARANCE_CODES.get(action.name, "ERR_GROUP_NO_CLEARANCE")
        guid, target = request.guid or "", request.target or ""
        ranks = self._ranks
        if state.owners.get(guid) == target:
            raise _Refusal("clearance", code, f"{target!r} owns group {guid!r}; nobody may "
                           f"{action.name} the owner")
        if action.name == "addMembers":
            # Adding grants a scope: it may not rank above the actor's (an admin may add admins).
            if ranks[target_scope] > ranks[scope]:
                raise _Refusal("clearance", code, f"scope {scope!r} may not add a member as "
                               f"{target_scope!r}: the new scope may not rank above the actor's")
            return
        if ranks[scope] <= ranks[target_scope]:
            raise _Refusal("clearance", code, f"scope {scope!r} may not {action.name} a member whose "
                           f"scope is {target_scope!r}: only a higher scope may act on a member")
        if action.name == "changeScope":
            new_scope = request.context["newScope"]
            if ranks[new_scope] > ranks[scope]:
                raise _Refusal("clearance", code, f"scope {scope!r} may not give anyone the scope "
                               f"{new_scope!r}: the new scope may not rank above the actor's")

    def _constraints(self, active: tuple[Constraint, ...], request: AuthzRequest, state: RuntimeState,
                     layer: str, subject: str, guid: str | None, code: str, target_scope: str | None) -> None:
        for defn, value, source in active:
            problem = self._violation(defn, value, request, state, target_scope)
            if problem:
                who = f"role {subject!r}" if layer == "role" else f"scope {subject!r} in group {guid!r}"
                on_target = defn.fact == "target.scope"
                raise _Refusal("clearance" if on_target else layer, code if on_target else DENIED,
                               f"{who} has {defn.key} = {_show(value)} (from {source}); {problem}")

    def _violation(self, defn: PermissionDef, value: Any, request: AuthzRequest, state: RuntimeState,
                   target_scope: str | None) -> str | None:
        for fact, values in defn.when.items():
            seen = _fact(fact, request, state, self.policy, target_scope)
            known = self._vocabulary.get(fact)
            # skipped only for a value the catalogue knows for that fact and the condition does not
            # name: "Custom", 1 or "x" is no reason to skip a constraint (fail closed)
            if seen is not _MISSING and seen not in values and (known is None or seen in known):
                return None
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

    # -- Casbin ----------------------------------------------------------------------------
    def _layer(self, state: RuntimeState, action: Action, layer: str, sub: str, dom: str) -> LayerAnswer:
        """The gate (Casbin) and the active constraint values for sub in dom: cached by exactly
        those inputs, rebuilt when the policy part of the state changes."""
        key = (layer, sub, dom, action.name)
        if self._compiled_for_state(state):
            cached = self._answers.get(key)
            if cached is not None:
                return cached
        with self._lock:
            if not self._compiled_for_state(state):
                self._compile(state)
            where = "no scope key gates it"
            if layer == "role" or action.scope_key:
                allowed, rule = self._enforcer.enforce_ex(*key)  # type: ignore[union-attr]
                gate = (bool(allowed), rule[6] if rule else "no policy line")
                where = f"group override in group {rule[3]!r}" if gate[1] == "group override" else gate[1]
            else:
                gate = (True, where)
            defs = action.role_constraints if layer == "role" else action.scope_constraints
            guid = None if dom == "*" else dom
            active = []
            for defn in defs:
                value, source = resolve_value(self.policy, state, layer, sub, guid, defn.key)
                if not (value is None or value == "all" or (defn.type == "allowDeny" and value == "allow")):
                    active.append((defn, value, source))
            who = f"role {sub!r}" if layer == "role" else f"scope {sub!r}"
            answer = (*gate, tuple(active), f"{who} allows {action.name} (from {where})")
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
        self._enforcer, self._answers = enforcer, {}
        self._compiled_for = (state, state.policy_generation)


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


def _require_inputs(action: Action, request: AuthzRequest, policy: PolicySet) -> None:
    if not request.guid and ((action.scope_key and not action.role_key)
                             or GROUP_RULES.get(action.name) in ("owner", "admin", "moderator")):
        raise BadRequestError.field("guid", f"{action.name} is a group action: guid is required")
    if request.guid and not takes_group(action):
        raise BadRequestError.field("guid", f"{action.name} takes no group: send guid only with group "
                                    "actions, never to have it ignored")
    if action.target_required and not request.target:
        raise BadRequestError.field("target", f"{action.name} acts on a member: target is required")
    new_scope = request.context.get("newScope")
    if action.name == "changeScope" and new_scope is None:
        raise BadRequestError.field("context.newScope", "changeScope needs the new scope")
    if new_scope is not None and new_scope not in policy.scopes:
        raise BadRequestError.field("context.newScope", f"must be one of {', '.join(policy.scopes)}")


def _target_scope(action: Action, request: AuthzRequest, state: RuntimeState) -> str:
    """The target's scope for this action, after the target facts the write path refuses on."""
    guid, target, name = request.guid or "", request.target or "", action.name
    if target == request.uid:
        raise _Refusal("clearance", "ERR_GROUP_NO_SELF_ACTION", f"{request.uid!r} may not {name} themselves")
    banned = state.is_banned(guid, target)
    if name == "addMembers":
        if banned:
            raise _Refusal("clearance", "ERR_BANNED_GROUPMEMBER", f"{target!r} is banned from group "
                           f"{guid!r}; unban them before adding them")
        current = state.scope_of(guid, target)
        if current is not None:
            raise _Refusal("clearance", "ERR_ALREADY_JOINED", f"{target!r} is already a member of group "
                           f"{guid!r} (as {current})")
        return str(request.context.get("newScope") or "participant")
    if name == "ban" and banned:
        raise _Refusal("clearance", "ERR_ALREADY_BANNED", f"{target!r} is already banned from group {guid!r}")
    if name == "unban" and not banned:
        raise _Refusal("clearance", "ERR_NOT_A_BANNED_USER", f"{target!r} is not banned from group {guid!r}")
    scope = state.scope_of(guid, target)
    if scope is None and action.name in OUTSIDER_TARGET_ACTIONS:
        return "participant"
    if scope is None:
        raise _Refusal("clearance", "ERR_NOT_A_MEMBER",
                       f"{request.target!r} is not a member of group {request.guid!r}")
    if action.name == "changeScope" and request.context.get("newScope") == scope:
        raise _Refusal("clearance", "ERR_SAME_SCOPE", f"{request.target!r} is already {scope}")
    return scope


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
        return state.users.get(request.target, "default")
    if target_scope is not None:
        return target_scope
    action = policy.actions[request.action]
    try:
        return _target_scope(action, request, state)
    except _Refusal:
        return _MISSING


def _show(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return repr(value)
