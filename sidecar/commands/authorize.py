"""`chatauthz authorize`: one decision from the command line, optionally with its explanation.

The runtime state comes from the embedded store (--data-dir), Redis (--redis-url) or a YAML
world file in the policy test suites' format (--world). Exit codes: 0 allowed, 1 denied,
2 usage (bad flags, an unreadable store or world, a request the sidecar would answer with 400),
3 invalid policy.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from sidecar.commands.common import (
    EXIT_USAGE,
    CommandError,
    add_policy_options,
    add_store_options,
    policy_of,
    redis_flags,
    report_error,
    settings_from,
    state_of,
)
from sidecar.engine import AuthzRequest, Decision, Engine
from sidecar.errors import ChatAuthzError
from sidecar.explain import Step, explain, format_steps
from sidecar.policy import PolicySet
from sidecar.policy.yamlio import LineDict, parse_yaml_all
from sidecar.state import RuntimeState
from sidecar.suites.runner import build_state
from sidecar.suites.world import WorldBuilder
from sidecar.validation import clean_id
from sidecar.validation import context as checked_context

EXIT_DENIED = 1
NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?")


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("authorize", help="decide one request from the command line",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uid", required=True, help="the user asking")
    parser.add_argument("--action", required=True, help="the action (a catalogue action key)")
    parser.add_argument("--guid", help="the group, for group actions")
    parser.add_argument("--target", help="the uid acted on")
    parser.add_argument("--context", action="append", default=[], metavar="KEY=VALUE",
                        help="a fact (repeatable); true/false become booleans, numbers numbers")
    parser.add_argument("--explain", action="store_true", help="print each layer, key, value and source")
    parser.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    add_store_options(parser, world=True)
    add_policy_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        request = AuthzRequest(cli_id(args.uid, "uid"), args.action,
                               None if args.guid is None else cli_id(args.guid, "guid"),
                               None if args.target is None else cli_id(args.target, "target"),
                               parse_context(args.context))
        settings = settings_from(data_dir=args.data_dir, policies=args.policies, model=args.model,
                                 **redis_flags(args))
        policy = policy_of(settings)
        state = world_state(Path(args.world), policy) if args.world else state_of(settings)[0]
        try:
            decision, steps = explain(Engine(policy), request, state)
        except ChatAuthzError as exc:
            raise CommandError(EXIT_USAGE, f"chatauthz authorize: {exc.message}") from exc
    except CommandError as error:
        return report_error(error)
    print(render(decision, steps if args.explain else None, args.format))
    return 0 if decision.allowed else EXIT_DENIED


def cli_id(value: str, field: str) -> str:
    """--uid/--guid/--target through HTTP's canonicaliser (so MARK is mark); exit 2 if invalid."""
    try:
        return clean_id(value, field)
    except ChatAuthzError as exc:
        raise CommandError(EXIT_USAGE, f"chatauthz authorize: --{field}: {exc.message}") from exc


def parse_context(pairs: list[str]) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise CommandError(EXIT_USAGE, f"chatauthz authorize: --context takes KEY=VALUE, got {pair!r}")
        facts[key] = {"true": True, "false": False}.get(raw, raw)
        if NUMBER.fullmatch(raw):
            facts[key] = float(raw) if "." in raw else int(raw)
    try:
        return checked_context(facts)
    except ChatAuthzError as exc:
        raise CommandError(EXIT_USAGE, f"chatauthz authorize: {exc.message}") from exc


def world_state(path: Path, policy: PolicySet) -> RuntimeState:
    """A world file: either a suite-style `world:` mapping or the world's keys at the top."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(EXIT_USAGE, f"chatauthz authorize: cannot read {path}: {exc}") from exc
    data, problems = parse_yaml_all(text, path.name)
    world = data.get("world") if isinstance(data, LineDict) and "world" in data else data
    line = data.line_of("world") if isinstance(data, LineDict) else 1

    def problem(at: int, message: str) -> None:
        problems.append(f"{path.name}:{at}: {message}")
    ops = WorldBuilder(policy, problem).ops(world, line, ()) if data is not None else []
    if problems:
        raise CommandError(EXIT_USAGE, f"chatauthz authorize: invalid world {path}:", *sorted(problems))
    return build_state(ops)


def render(decision: Decision, steps: list[Step] | None, form: str) -> str:
    if form == "json":
        body = decision.to_dict()
        if steps is not None:
            body["explanation"] = [s.to_dict() for s in steps]
        return json.dumps(body, indent=2)
    verdict = "allowed" if decision.allowed else f"denied ({decision.code})"
    where = f"layer {decision.layer}, role {decision.role}" + (f", scope {decision.scope}" if decision.scope else "")
    lines = [f"{verdict} at {where}", f"reason: {decision.reason}"]
    if steps is not None:
        lines += ["explanation:", format_steps(steps)]
    return "\n".join(lines)
