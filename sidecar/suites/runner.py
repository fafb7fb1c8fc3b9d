"""Policy test suites (policies/tests/*.yaml): load them, build each case's world, run its checks.

A suite file: `suite: name`, optional `description` and `world` (shared by every case), and
`cases:`, each with `name`, optional `world` (applied after the suite's) and `checks:`, each a
request (uid, action, guid?, target?, context?) plus `expect: {allowed, code?, layer?}`.
A world (users, roles, groups) becomes the ops the API would write, applied to a RuntimeState;
the checks are decided by the server's Engine. Pure: imports the engine, never Flask or Redis.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.engine import AuthzRequest, Decision, Engine
from sidecar.errors import ChatAuthzError
from sidecar.policy.types import PolicySet
from sidecar.policy.yamlio import LineDict, parse_yaml_all
from sidecar.state import Op, RuntimeState
from sidecar.suites.world import WorldBuilder, checked_fields
from sidecar.validation import canonical_id

LAYERS = ("role", "membership", "scope", "clearance")
EXPECT_FIELDS = {"allowed", "code", "layer"}
CHECK_FIELDS = {"name", "uid", "action", "guid", "target", "context", "expect"}


@dataclass(frozen=True)
class Check:
    name: str
    line: int
    request: AuthzRequest
    expect: Mapping[str, Any]


@dataclass(frozen=True)
class Case:
    suite: str
    name: str
    file: str
    line: int
    ops: tuple[Op, ...]
    checks: tuple[Check, ...]

    @property
    def id(self) -> str:
        return f"{self.file}::{self.name}"


@dataclass(frozen=True)
class CheckResult:
    check: Check
    decision: Decision | None
    error: str | None

    @property
    def passed(self) -> bool:
        if self.decision is None:
            return False
        actual = {"allowed": self.decision.allowed, "code": self.decision.code, "layer": self.decision.layer}
        return all(actual[k] == v for k, v in self.check.expect.items())


@dataclass(frozen=True)
class CaseResult:
    case: Case
    results: tuple[CheckResult, ...]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if not r.passed]


# -- loading -----------------------------------------------------------------------------------
def load_suites(tests_dir: Path | str, policy: PolicySet, label: str = "tests") -> tuple[list[Case], list[str]]:
    """Every *.yaml under tests_dir (sorted): the cases, and every problem as 'file:line: message'."""
    cases: list[Case] = []
    problems: list[str] = []
    for path in sorted(Path(tests_dir).glob("*.yaml")):
        name = f"{label}/{path.name}"
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{name}:1: cannot read {path}: {exc}")
            continue
        found, found_problems = load_suite_text(text, name, policy)
        cases += found
        problems += found_problems
    return cases, problems


def load_suite_text(text: str, file: str, policy: PolicySet) -> tuple[list[Case], list[str]]:
    data, problems = parse_yaml_all(text, file)
    if data is None:
        return [], problems or [f"{file}:1: the file is empty"]
    loader = _SuiteLoader(file, policy, problems)
    return loader.suite(data), problems


class _SuiteLoader:
    def __init__(self, file: str, policy: PolicySet, problems: list[str]) -> None:
        self.file, self.policy, self.problems = file, policy, problems
        self.engine = Engine(policy)

    def problem(self, line: int, message: str) -> None:
        self.problems.append(f"{self.file}:{line}: {message}")

    def suite(self, data: Any) -> list[Case]:
        if not isinstance(data, LineDict):
            self.problem(1, "a suite must be a mapping with suite and cases")
            return []
        checked_fields(self.problem, data, {"version", "suite", "description", "world", "cases"}, "suite file")
        name = data.get("suite")
        if not isinstance(name, str) or not name.strip():
            self.problem(data.line_of("suite"), "suite must be a non-empty name")
            name = self.file
        if data.get("version", 1) != 1:
            self.problem(data.line_of("version"), "version must be 1")
        before = len(self.problems)
        shared = WorldBuilder(self.policy, self.problem).ops(data.get("world"), data.line_of("world"), ())
        world_ok = len(self.problems) == before  # a broken world would make every case misleading
        cases = data.get("cases")
        if not isinstance(cases, list) or not cases:
            self.problem(data.line_of("cases"), "cases must be a non-empty list")
            return []
        result: list[Case] = []
        seen: dict[str, int] = {}
        for number, spec in enumerate(cases, start=1):
            case = self.case(name, spec, number, shared, data.line_of("cases"))
            if case is None:
                continue
            if case.name in seen:
                self.problem(case.line, f"case {case.name!r} is defined twice (first at line {seen[case.name]})")
                continue
            seen[case.name] = case.line
            result.append(case)
        return result if world_ok else []

    def case(self, suite: str, spec: Any, number: int, shared: list[Op], cases_line: int) -> Case | None:
        if not isinstance(spec, LineDict):
            self.problem(cases_line, f"case {number} must be a mapping with name and checks")
            return None
        checked_fields(self.problem, spec, {"name", "description", "world", "checks"}, f"case {number}")
        name = spec.get("name")
        if not isinstance(name, str) or not name.strip():
            self.problem(spec.line, f"case {number}: name must be a non-empty string")
            name = f"case {number}"
        before = len(self.problems)
        ops = WorldBuilder(self.policy, self.problem).ops(spec.get("world"), spec.line_of("world"), shared)
        world_ok = len(self.problems) == before
        checks = spec.get("checks")
        if not isinstance(checks, list) or not checks:
            self.problem(spec.line_of("checks"), f"case {name!r}: checks must be a non-empty list")
            return None
        built = [self.check(name, c, i, spec.line_of("checks")) for i, c in enumerate(checks, start=1)]
        if any(c is None for c in built) or not world_ok:
            return None
        return Case(suite, name, self.file, spec.line, tuple(shared) + tuple(ops),
                    tuple(c for c in built if c is not None))

    def check(self, case: str, spec: Any, number: int, checks_line: int) -> Check | None:
        where = f"case {case!r} check {number}"
        if not isinstance(spec, LineDict):
            self.problem(checks_line, f"{where}: must be a mapping with uid, action and expect")
            return None
        bad = len(self.problems)
        checked_fields(self.problem, spec, CHECK_FIELDS, where)
        fields: dict[str, Any] = {}
        for name in ("uid", "action", "guid", "target"):
            value = spec.get(name)
            if (value is None and name in ("uid", "action")) or (value is not None and not isinstance(value, str)):
                self.problem(spec.line_of(name), f"{where}: {name} must be a string")
            elif value is not None and name != "action":
                value = canonical_id(value)  # as HTTP canonicalises it
                if value is None:
                    self.problem(spec.line_of(name), f"{where}: {name} {spec.get(name)!r} must be 1-100 "
                                 "characters of letters, digits, - and _")
            fields[name] = value
        context = spec.get("context") or {}
        if not isinstance(context, dict) or not all(isinstance(v, (str, bool, int, float)) for v in context.values()):
            self.problem(spec.line_of("context"), f"{where}: context must map names to strings, numbers or booleans")
            context = {}
        expect = self.expect(where, spec)
        if len(self.problems) > bad or expect is None:
            return None
        request = AuthzRequest(fields["uid"], fields["action"], fields["guid"], fields["target"], dict(context))
        try:
            self.engine.validate(request)
        except ChatAuthzError as exc:
            self.problem(spec.line, f"{where}: {exc.message.removeprefix('The request is invalid: ')}")
            return None
        label_value = spec.get("name")
        label = label_value if isinstance(label_value, str) else f"#{number}"
        return Check(label, spec.line, request, expect)

    def expect(self, where: str, spec: LineDict) -> dict[str, Any] | None:
        expect = spec.get("expect")
        if not isinstance(expect, LineDict) or not isinstance(expect.get("allowed"), bool):
            self.problem(spec.line_of("expect"), f"{where}: expect must be a mapping with allowed: true or false")
            return None
        checked_fields(self.problem, expect, EXPECT_FIELDS, f"{where} expect")
        if "code" in expect and not isinstance(expect["code"], str):
            self.problem(expect.line_of("code"), f"{where}: expect.code must be a string")
        if "layer" in expect and expect["layer"] not in LAYERS:
            self.problem(expect.line_of("layer"), f"{where}: expect.layer must be one of {', '.join(LAYERS)}")
        if expect.get("allowed") and expect.get("code"):
            self.problem(expect.line_of("code"), f"{where}: an allowed decision carries no code")
        return {k: v for k, v in expect.items() if k in EXPECT_FIELDS}


# -- running -----------------------------------------------------------------------------------
def build_state(ops: tuple[Op, ...] | list[Op]) -> RuntimeState:
    """The world as the runtime state the API's writes would have left."""
    state = RuntimeState()
    for op in ops:
        state.apply(op)
    return state


def run_case(case: Case, policy: PolicySet) -> CaseResult:
    engine = Engine(policy)
    state = build_state(case.ops)
    results: list[CheckResult] = []
    for check in case.checks:
        try:
            results.append(CheckResult(check, engine.decide(check.request, state), None))
        except ChatAuthzError as exc:  # validated at load time; kept so a run never crashes
            results.append(CheckResult(check, None, exc.message))
    return CaseResult(case, tuple(results))


def run_cases(cases: list[Case], policy: PolicySet) -> list[CaseResult]:
    return [run_case(case, policy) for case in cases]


# -- reporting ---------------------------------------------------------------------------------
def describe_request(request: AuthzRequest) -> str:
    parts = [f"uid={request.uid}", f"action={request.action}"]
    parts += [f"{k}={v}" for k, v in (("guid", request.guid), ("target", request.target)) if v]
    parts += [f"context.{k}={v!r}" for k, v in request.context.items()]
    return " ".join(parts)


def describe_expect(expect: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={_show(v)}" for k, v in expect.items())


def describe_decision(decision: Decision | None, keys: tuple[str, ...] = ("allowed", "code", "layer")) -> str:
    if decision is None:
        return "no decision"
    actual = {"allowed": decision.allowed, "code": decision.code, "layer": decision.layer}
    return " ".join(f"{k}={_show(actual[k])}" for k in keys)


def describe_failure(result: CheckResult) -> str:
    """The check, the expected and actual decision, and the explanation (the decision's reason)."""
    check = result.check
    lines = [f"check {check.name} (line {check.line})",
             f"  request:     {describe_request(check.request)}",
             f"  expected:    {describe_expect(check.expect)}",
             f"  actual:      {describe_decision(result.decision)}"]
    lines.append(f"  explanation: {result.decision.reason if result.decision else result.error}")
    return "\n".join(lines)


def describe_case_failure(result: CaseResult) -> str:
    case = result.case
    head = f"{case.file}:{case.line}: suite {case.suite!r} case {case.name!r}: " \
           f"{len(result.failures)} of {len(result.results)} checks failed"
    return "\n".join([head, *(_indent(describe_failure(r)) for r in result.failures)])


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "none" if value is None else str(value)
