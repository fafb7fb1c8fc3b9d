"""Cerbos policies equivalent to chatauthz's policy files, and the facts each check must carry.

Generated from the project's policy (policies/*.yaml through sidecar.policy.load_policy) plus
the policy part of the runtime state (roles made at runtime and their permission values):

- role layer: a resource policy for kind "chat": one ALLOW rule for every action and role, then
  one DENY rule per role listing the actions its gate denies (catalogue default < roles.yaml <
  runtime value; restricted features deny), and one DENY rule per (role, action) with active
  constraint keys, as CEL over the check's facts;
- scope layer: derived roles g_owner, g_banned, g_outsider and g_<scope> (from the actor's
  membership facts on the resource); DENY rules for banned users and outsiders on every group
  action, per scope for the actions its gate denies and for its active constraint keys;
- clearance: DENY rules on the target's facts (self-action, target not a member, same scope,
  target owns the group) and rank comparisons (actor rank vs target rank) as CEL.

Cerbos evaluates DENY over ALLOW, so an action is allowed exactly when no layer refuses it,
as in the sidecar. Cerbos is stateless: `cerbos_principal` / `cerbos_resource` attach what the
sidecar looks up itself (the actor's role, the actor's and the target's membership in the
group, the owner, bans, the target's role). Per-group overrides (set_scope_permissions) are
not modelled: the HTTP benchmark state has none.
"""
from __future__ import annotations

import json
from typing import Any

from sidecar.policy import Action, PermissionDef, PolicySet
from sidecar.rules import effective_restrictions, resolve_value
from sidecar.state import RuntimeState

KIND = "chat"
OUTSIDER_TARGET_ACTIONS = ("ban", "unban")  # as sidecar.engine: a non-member target ranks lowest


def in_group(action: Action) -> bool:
    return action.scope_key or bool(action.scope_constraints)


def _q(value: str) -> str:
    return json.dumps(value)  # a CEL string literal (ASCII)


def _list(values: Any) -> str:
    return "[" + ", ".join(_q(str(v)) for v in values) + "]"


def _active(defn: PermissionDef, value: Any) -> bool:
    return not (value is None or value == "all" or (defn.type == "allowDeny" and value == "allow"))


def _rank_expr(policy: PolicySet, expr: str) -> str:
    out = "0"
    for name, scope in sorted(policy.scopes.items(), key=lambda item: item[1].rank):
        out = f"({expr} == {_q(name)} ? {scope.rank} : {out})"
    return out


def _fact(policy: PolicySet, fact: str, action: str) -> tuple[str, str]:
    """(CEL: the fact is present, CEL: its value) for one action."""
    kind, _, attribute = fact.partition(".")
    if kind == "context":
        return f"has(R.attr.context.{attribute})", f"R.attr.context.{attribute}"
    if attribute == "role":
        return 'R.attr.target != ""', "R.attr.targetRole"
    return _target_scope(action)


def _target_scope(action: str) -> tuple[str, str]:
    """The target's effective scope (sidecar.engine._target_scope): missing when it refuses."""
    base = 'R.attr.target != "" && R.attr.target != P.id'
    if action == "addMembers":
        return base, '(has(R.attr.context.newScope) ? R.attr.context.newScope : "participant")'
    if action in OUTSIDER_TARGET_ACTIONS:
        return base, '(R.attr.targetScope != "" ? R.attr.targetScope : "participant")'
    present = base + ' && R.attr.targetScope != ""'
    if action == "changeScope":
        present += ' && (!has(R.attr.context.newScope) || R.attr.context.newScope != R.attr.targetScope)'
    return present, "R.attr.targetScope"


def _violation(policy: PolicySet, defn: PermissionDef, value: Any, action: str) -> str:
    """CEL true when the constraint refuses (sidecar.engine.Engine._violation)."""
    parts = []
    for fact, values in defn.when.items():
        present, seen = _fact(policy, fact, action)
        parts.append(f"(!({present}) || {seen} in {_list(values)})")
    assert defn.fact is not None
    present, seen = _fact(policy, defn.fact, action)
    if defn.type == "mode":
        bad = f"{seen} != true"
    elif defn.type == "allowDeny":
        bad = f"{seen} == true"
    else:
        bad = f"!({seen} in {_list(value)})"
    parts.append(f"(!({present}) || {bad})")
    return " && ".join(parts)


def _deny(actions: list[str], condition: str | None = None, *, roles: list[str] | None = None,
          derived: list[str] | None = None, name: str = "") -> dict[str, Any]:
    rule: dict[str, Any] = {"actions": actions, "effect": "EFFECT_DENY"}
    if name:
        rule["name"] = name
    if roles:
        rule["roles"] = roles
    if derived:
        rule["derivedRoles"] = derived
    if condition:
        rule["condition"] = {"match": {"expr": condition}}
    return rule


def generate(policy: PolicySet, state: RuntimeState) -> dict[str, dict[str, Any]]:
    """{file name: policy document} for Cerbos's disk store."""
    actions = policy.actions
    roles = sorted(set(policy.roles) | set(state.roles))
    scopes = sorted(policy.scopes, key=lambda s: -policy.scopes[s].rank)
    rules: list[dict[str, Any]] = [{"name": "base", "actions": ["*"], "effect": "EFFECT_ALLOW", "roles": ["*"]}]

    # -- role layer: roles x actions, restricted features, constraint keys
    for role in roles:
        features, _ = effective_restrictions(policy, state, role)
        gated = {a for f in features if f in policy.features for a in policy.features[f].actions}
        denied = []
        for name, action in actions.items():
            if name in gated or (action.role_key and resolve_value(policy, state, "role", role, None, name)[0] != "allow"):
                denied.append(name)
        if denied:
            rules.append(_deny(sorted(denied), roles=[role], name=f"role_{role}_gate"))
        for name, action in actions.items():
            if name in denied:
                continue
            checks = []
            for defn in action.role_constraints:
                value, _ = resolve_value(policy, state, "role", role, None, defn.key)
                if _active(defn, value):
                    checks.append(_violation(policy, defn, value, name))
            if checks:
                rules.append(_deny([name], " || ".join(f"({c})" for c in checks), roles=[role],
                                   name=f"role_{role}_{name}_constraints"))

    # -- scope layer: membership, scopes x group actions, constraint keys
    group_actions = sorted(n for n, a in actions.items() if in_group(a))
    rules.append(_deny(group_actions, derived=["g_banned", "g_outsider"], name="not_a_member"))
    for scope in scopes:
        denied = [n for n in group_actions if actions[n].scope_key
                  and resolve_value(policy, state, "scope", scope, None, n)[0] != "allow"]
        if denied:
            rules.append(_deny(denied, derived=[f"g_{scope}"], name=f"scope_{scope}_gate"))
        for name in group_actions:
            if name in denied:
                continue
            checks = []
            for defn in actions[name].scope_constraints:
                value, _ = resolve_value(policy, state, "scope", scope, None, defn.key)
                if _active(defn, value):
                    checks.append(_violation(policy, defn, value, name))
            if checks:
                rules.append(_deny([name], " || ".join(f"({c})" for c in checks), derived=[f"g_{scope}"],
                                   name=f"scope_{scope}_{name}_constraints"))

    # -- clearance over the target
    member_roles = ["g_owner"] + [f"g_{s}" for s in scopes]
    for name in sorted(n for n, a in actions.items() if a.target_required):
        refuse = ["R.attr.target == P.id"]
        if name != "addMembers" and name not in OUTSIDER_TARGET_ACTIONS:
            refuse.append('R.attr.targetScope == ""')
        if name == "changeScope":
            refuse.append("(has(R.attr.context.newScope) && R.attr.context.newScope == R.attr.targetScope)")
        rules.append(_deny([name], " || ".join(refuse), derived=member_roles, name=f"target_{name}"))
        _, target_scope = _target_scope(name)
        target_rank = _rank_expr(policy, target_scope)
        for scope in scopes:
            rank = policy.scopes[scope].rank
            refuse = ["R.attr.targetOwner"]
            refuse.append(f"{target_rank} > {rank}" if name == "addMembers" else f"{target_rank} >= {rank}")
            if name == "changeScope":
                refuse.append(f'has(R.attr.context.newScope) && {_rank_expr(policy, "R.attr.context.newScope")} > {rank}')
            rules.append(_deny([name], " || ".join(f"({r})" for r in refuse), derived=[f"g_{scope}"],
                               name=f"clearance_{name}_{scope}"))

    in_a_group = 'R.attr.guid != ""'
    member = f'{in_a_group} && !R.attr.actorOwner && !R.attr.actorBanned'
    definitions = [
        {"name": "g_owner", "parentRoles": ["*"], "condition": {"match": {"expr": f"{in_a_group} && R.attr.actorOwner"}}},
        {"name": "g_banned", "parentRoles": ["*"],
         "condition": {"match": {"expr": f"{in_a_group} && !R.attr.actorOwner && R.attr.actorBanned"}}},
        {"name": "g_outsider", "parentRoles": ["*"],
         "condition": {"match": {"expr": f'{member} && R.attr.actorScope == ""'}}},
    ] + [{"name": f"g_{s}", "parentRoles": ["*"],
          "condition": {"match": {"expr": f"{member} && R.attr.actorScope == {_q(s)}"}}} for s in scopes]
    return {
        "chat_scopes.yaml": {"apiVersion": "api.cerbos.dev/v1",
                             "derivedRoles": {"name": "chat_scopes", "definitions": definitions}},
        "chat.yaml": {"apiVersion": "api.cerbos.dev/v1",
                      "resourcePolicy": {"version": "default", "resource": KIND,
                                         "importDerivedRoles": ["chat_scopes"], "rules": rules}},
    }


# -- the facts a Cerbos caller must send -----------------------------------------------------
def cerbos_principal(uid: str, state: RuntimeState) -> dict[str, Any]:
    return {"id": uid, "roles": [state.users.get(uid, "default")]}


def cerbos_resource(check: dict[str, Any], state: RuntimeState, rid: str) -> dict[str, Any]:
    """One /authorize body as a Cerbos resource entry carrying the facts the sidecar looks up."""
    uid, guid, target = check["uid"], check.get("guid") or "", check.get("target") or ""
    context = dict(check.get("context") or {})
    if "receiverType" not in context and (guid or target):
        context["receiverType"] = "group" if guid else "user"  # as sidecar.engine._fact derives it
    attr = {
        "guid": guid, "target": target,
        "actorOwner": bool(guid) and state.owners.get(guid) == uid,
        "actorBanned": bool(guid) and state.is_banned(guid, uid),
        "actorScope": (state.scope_of(guid, uid) or "") if guid else "",
        "targetOwner": bool(guid and target) and state.owners.get(guid) == target,
        "targetScope": (state.scope_of(guid, target) or "") if guid and target else "",
        "targetRole": state.users.get(target, "default") if target else "",
        "context": context,
    }
    return {"actions": [check["action"]], "resource": {"kind": KIND, "id": rid, "attr": attr}}


def cerbos_request(checks: list[dict[str, Any]], state: RuntimeState, request_id: str) -> dict[str, Any]:
    """One CheckResources request for checks that share one uid (a single check, or a batch)."""
    uids = {c["uid"] for c in checks}
    assert len(uids) == 1, "a Cerbos request has one principal"
    return {"requestId": request_id, "principal": cerbos_principal(checks[0]["uid"], state),
            "resources": [cerbos_resource(c, state, f"r{i}") for i, c in enumerate(checks)]}


def cerbos_answers(response: dict[str, Any], checks: list[dict[str, Any]]) -> list[bool]:
    by_id = {r["resource"]["id"]: r["actions"] for r in response["results"]}
    return [by_id[f"r{i}"][c["action"]] == "EFFECT_ALLOW" for i, c in enumerate(checks)]
