"""Turns the policy files plus the policy part of runtime state into Casbin policy lines.

Line: [priority, layer, sub, dom, obj, eft, source] (see model.conf). Users and memberships
never become lines; only roles x actions, scopes x actions and per-group overrides do. Pure.
"""
from __future__ import annotations

from typing import Any

from sidecar.policy import PolicySet
from sidecar.state import RuntimeState

PRIORITY_RESTRICTED = "10"
PRIORITY_RUNTIME = "20"
PRIORITY_FILE = "30"
PRIORITY_DEFAULT = "40"

Rule = list[str]


def effective_restrictions(policy: PolicySet, state: RuntimeState, role: str) -> tuple[frozenset[str], str]:
    """The role's restricted features and where they come from (runtime replaces the file's list)."""
    if role in state.restricted:
        return state.restricted[role], "runtime"
    file_role = policy.roles.get(role)
    return (file_role.restricted_features, "roles.yaml") if file_role else (frozenset(), "none")


def build_rules(policy: PolicySet, state: RuntimeState) -> list[Rule]:
    """All policy lines, sorted by priority (the first match decides)."""
    rules: list[Rule] = []
    role_ids = set(policy.roles) | set(state.roles)
    for role in sorted(role_ids):
        rules += _role_lines(policy, state, role)
    for name, scope in policy.scopes.items():
        for key, value in scope.permissions.items():
            if policy.scope_keys[key].is_action:
                rules.append([PRIORITY_FILE, "scope", name, "*", key, value, "scopes.yaml"])
    for guid, scopes in state.overrides.items():
        for name, values in scopes.items():
            for key, value in values.items():
                if key in policy.scope_keys and policy.scope_keys[key].is_action:
                    rules.append([PRIORITY_RUNTIME, "scope", name, guid, key, value, "group override"])
    for action in policy.actions.values():
        role_default = policy.role_keys[action.name].default if action.role_key else "allow"
        rules.append([PRIORITY_DEFAULT, "role", "*", "*", action.name, role_default, "catalogue"])
        if action.scope_key:
            default = policy.scope_keys[action.name].default
            rules.append([PRIORITY_DEFAULT, "scope", "*", "*", action.name, default, "catalogue"])
    rules.sort(key=lambda rule: int(rule[0]))
    return rules


def _role_lines(policy: PolicySet, state: RuntimeState, role: str) -> list[Rule]:
    lines: list[Rule] = []
    features, source = effective_restrictions(policy, state, role)
    for feature in sorted(features):
        for action in policy.features[feature].actions if feature in policy.features else ():
            lines.append([PRIORITY_RESTRICTED, "role", role, "*", action, "deny",
                          f"restricted feature u.{feature} ({source})"])
    file_role = policy.roles.get(role)
    layers: list[tuple[str, dict[str, Any], str]] = [
        (PRIORITY_RUNTIME, state.role_permissions.get(role, {}), "runtime"),
        (PRIORITY_FILE, file_role.permissions if file_role else {}, "roles.yaml")]
    for priority, values, origin in layers:
        for key, value in values.items():
            if key in policy.role_keys and policy.role_keys[key].is_action:
                lines.append([priority, "role", role, "*", key, value, origin])
    return lines


def resolve_value(policy: PolicySet, state: RuntimeState, layer: str, subject: str,
                  guid: str | None, key: str) -> tuple[Any, str]:
    """A constraint key's effective value and its source: runtime, then file, then catalogue."""
    if layer == "role":
        runtime = state.role_permissions.get(subject)
        if runtime and key in runtime:
            return runtime[key], "runtime"
        file_role = policy.roles.get(subject)
        if file_role and key in file_role.permissions:
            return file_role.permissions[key], "roles.yaml"
        return policy.role_keys[key].default, "catalogue"
    override = state.overrides.get(guid, {}).get(subject) if guid else None
    if override and key in override:
        return override[key], "group override"
    scope = policy.scopes[subject]
    if key in scope.permissions:
        return scope.permissions[key], "scopes.yaml"
    return policy.scope_keys[key].default, "catalogue"
