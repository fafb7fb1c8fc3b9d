"""The answers: a Decision (from /authorize or the embedded engine) and a write's token."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.client.errors import UNAVAILABLE


@dataclass(frozen=True, slots=True)
class Decision:
    """One decision. `bool(decision)` is `decision.allowed` (so `if client.check(...)` reads right).
    token is "<epoch>:<revision>" of the state that decided; decision_id names it in the logs."""
    allowed: bool
    code: str | None
    reason: str
    layer: str
    role: str
    scope: str | None
    revision: int
    token: str
    decision_id: str

    def __bool__(self) -> bool:
        return self.allowed

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Decision:
        """From the `data` of POST /authorize (or one result of /authorize/batch)."""
        return _from_body(body)

    @classmethod
    def of(cls, allowed: bool, code: str | None, reason: str, layer: str, role: str, scope: str | None,
           revision: int, token: str, decision_id: str) -> Decision:
        """From its fields (Embedded, from the engine's decision without a body)."""
        return _of(allowed, code, reason, layer, role, scope, revision, token, decision_id)

    @classmethod
    def unavailable(cls, why: str) -> Decision:
        """fail_closed: the denial that stands in for an answer the sidecar did not give."""
        return cls(False, UNAVAILABLE, f"the sidecar did not answer ({why}); denied (fail closed)", "client",
                   "", None, 0, "", "")


class WriteToken(str):
    """A write's consistency token "<epoch>:<revision>" (a str: pass it as at_least_revision), with
    the write's revision and its answer's data (add_members: the per-uid outcomes)."""

    revision: int
    data: Any

    def __new__(cls, token: str, revision: int, data: Any = None) -> WriteToken:
        self = super().__new__(cls, token)
        self.revision = revision
        self.data = data
        return self


_SET = [Decision.__dict__[name].__set__ for name in Decision.__slots__]  # the slots' own setters
_NEW = object.__new__


def _of(allowed: bool, code: str | None, reason: str, layer: str, role: str, scope: str | None,
        revision: int, token: str, decision_id: str) -> Decision:
    """Decision(...) in half the time of the frozen __init__ (one object.__setattr__ per field):
    the slot descriptors set the fields once, before anyone holds the object. Embedded makes one
    per check, and its budget is a few microseconds."""
    a, c, r, l, ro, s, rev, t, d = _SET  # noqa: E741
    decision: Decision = _NEW(Decision)
    a(decision, allowed)
    c(decision, code)
    r(decision, reason)
    l(decision, layer)
    ro(decision, role)
    s(decision, scope)
    rev(decision, revision)
    t(decision, token)
    d(decision, decision_id)
    return decision


def _from_body(body: Mapping[str, Any]) -> Decision:
    get = body.get
    return _of(body["allowed"], get("code"), body["reason"], body["layer"], body["role"], get("scope"),
               body["revision"], get("token", ""), get("decisionId", ""))
