"""Runtime state -> YAML in the policy files' format, so a runtime change can move into git. Pure.

`roles_yaml` is a drop-in replacement for policies/roles.yaml: every role (the files' and the
runtime's) with its effective values (a runtime value wins over the file's key by key; a
runtime restrictedFeatures list replaces the file's), each headed by a comment saying what
the runtime changed. `group_overrides_yaml` holds the per-group scope overrides: the policy
files have no place for per-group state, so that document is for review and re-applying only.
"""
from __future__ import annotations

from typing import Any

import yaml

from sidecar.policy import PolicySet
from sidecar.rules import effective_restrictions
from sidecar.state import RuntimeState

RECORD_FIELDS = ("name", "description", "metadata", "settings")


def role_entries(policy: PolicySet, state: RuntimeState) -> list[tuple[str, dict[str, Any], str]]:
    """(role, its roles.yaml body, what the runtime changed) for every role, file roles first."""
    entries = []
    for role in [*policy.roles, *sorted(set(state.roles) - set(policy.roles))]:
        file_role = policy.roles.get(role)
        record = state.roles.get(role)
        if file_role is not None:
            fields = {"name": file_role.name, "description": file_role.description,
                      "metadata": file_role.metadata, "settings": file_role.settings}
        else:
            fields = {}
        changed: list[str] = []
        if record is not None:
            changed += [f for f in RECORD_FIELDS if record.get(f) != fields.get(f)]
            fields = {f: record.get(f) for f in RECORD_FIELDS}
        body: dict[str, Any] = {f: v for f, v in fields.items() if v is not None}
        runtime = state.role_permissions.get(role, {})
        file_perms = file_role.permissions if file_role else {}
        body["permissions"] = {**file_perms, **runtime}
        changed += [f"permissions.{k}" for k in runtime if file_perms.get(k, _UNSET) != runtime[k]]
        features, origin = effective_restrictions(policy, state, role)
        file_features = file_role.restricted_features if file_role else frozenset()
        if features or (origin == "runtime" and file_features):
            body["restrictedFeatures"] = [f"u.{f}" for f in sorted(features)]
        if origin == "runtime" and features != file_features:
            changed.append("restrictedFeatures")
        entries.append((role, body, _summary(file_role is not None, changed)))
    return entries


def roles_yaml(policy: PolicySet, state: RuntimeState, origin: str = "") -> str:
    lines = [f"# Exported by `chatauthz export`{' from ' + origin if origin else ''} at revision {state.revision}.",
             "# A drop-in replacement for policies/roles.yaml: every role with its effective values.",
             "# Review it, run `chatauthz check`, then commit it.",
             "version: 1", "roles:"]
    for role, body, summary in role_entries(policy, state):
        lines.append(f"  # {role}: {summary}")
        lines += ["  " + line for line in _dump({role: body}).splitlines()]
    return "\n".join(lines) + "\n"


def group_overrides_yaml(state: RuntimeState, origin: str = "") -> str:
    overrides = {guid: {scope: dict(values) for scope, values in sorted(scopes.items())}
                 for guid, scopes in sorted(state.overrides.items())}
    head = [f"# Per-group scope overrides exported by `chatauthz export`{' from ' + origin if origin else ''} "
            f"at revision {state.revision}.",
            "# Runtime state only (the policy files hold no per-group values): re-apply with",
            "# PUT /groups/{guid}/scopes/{scope}/permissions.",
            "version: 1"]
    return "\n".join(head) + "\n" + _dump({"groupOverrides": overrides})


def _summary(in_file: bool, changed: list[str]) -> str:
    if not in_file:
        return "created at runtime"
    if changed:
        return "roles.yaml, changed at runtime: " + ", ".join(changed)
    return "roles.yaml, unchanged"


def _dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, allow_unicode=True, width=100)


_UNSET = object()
