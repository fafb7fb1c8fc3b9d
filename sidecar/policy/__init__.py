"""Policy files: the catalogue, the seeded roles and scopes, and the Casbin model (pure, no I/O but reading files)."""
from sidecar.policy.loader import load_policy, load_policy_texts
from sidecar.policy.types import Action, Feature, PermissionDef, PolicySet, RoleDef, ScopeDef

__all__ = ["Action", "Feature", "PermissionDef", "PolicySet", "RoleDef", "ScopeDef",
           "load_policy", "load_policy_texts"]
