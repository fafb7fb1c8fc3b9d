"""Explains one decision: the steps the engine recorded while deciding it (Engine.decide's
trace), rendered for people. Nothing here re-derives a decision, so an explanation cannot
disagree with it. Pure."""
from __future__ import annotations

from sidecar.engine import ALLOWS, PASSES, REFUSES, SKIPPED, UNRESTRICTED, AuthzRequest, Decision, Engine, Step
from sidecar.state import RuntimeState

__all__ = ["ALLOWS", "PASSES", "REFUSES", "SKIPPED", "UNRESTRICTED", "Step", "explain", "format_steps"]


def explain(engine: Engine, request: AuthzRequest, state: RuntimeState) -> tuple[Decision, list[Step]]:
    """The engine's decision and the steps that led to it (the refusing one last)."""
    steps: list[Step] = []
    return engine.decide(request, state, steps), steps


def format_steps(steps: list[Step]) -> str:
    """One line per step: layer, key = value (from source) -> verdict; a gate's Casbin line under it."""
    width = max((len(s.layer) for s in steps), default=0)
    lines = []
    for step in steps:
        verdict = f" -> {step.verdict}" + (f" ({step.code})" if step.code else "")
        lines.append(f"  {step.layer.ljust(width)}  {step.key} = {step.value}  (from {step.source}){verdict}")
        if step.rule:
            lines.append(f"  {''.ljust(width)}    matched: {step.rule}")
    return "\n".join(lines)
