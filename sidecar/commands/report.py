"""The `check` report in three forms: text lines, one JSON object, a JUnit XML file."""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sidecar.suites.runner import (
    CaseResult,
    describe_case_failure,
    describe_decision,
    describe_expect,
    describe_request,
)

PROBLEM_RE = re.compile(r"(?P<file>[^:]*):(?P<line>[0-9]+): (?P<message>.*)", re.S)


@dataclass
class CheckReport:
    policy_dir: Path
    problems: list[str] = field(default_factory=list)
    results: list[CaseResult] = field(default_factory=list)
    policy_hash: str = ""

    @property
    def failed(self) -> list[CaseResult]:
        return [r for r in self.results if not r.passed]

    def sorted_problems(self) -> list[dict[str, Any]]:
        parsed = [split_problem(p) for p in self.problems]
        return sorted(parsed, key=lambda p: (p["file"], p["line"], p["message"]))


def split_problem(problem: str) -> dict[str, Any]:
    match = PROBLEM_RE.fullmatch(problem)
    if not match:
        return {"file": "", "line": 0, "message": problem}
    return {"file": match["file"], "line": int(match["line"]), "message": match["message"]}


# -- text --------------------------------------------------------------------------------------
def text_report(report: CheckReport) -> str:
    lines = [f"{p['file']}:{p['line']}: {p['message']}" for p in report.sorted_problems()]
    if report.problems:
        lines.append(f"chatauthz check: {len(report.problems)} problem(s) in {report.policy_dir}")
    if report.policy_hash:
        lines.append(f"policy files OK: {report.policy_dir} (hash {report.policy_hash})")
    lines += ["FAIL " + describe_case_failure(r) for r in report.failed]
    if report.results or report.policy_hash:
        suites = len({r.case.file for r in report.results})
        checks = sum(len(r.results) for r in report.results)
        lines.append(f"tests: {len(report.results) - len(report.failed)} passed, {len(report.failed)} failed "
                     f"({len(report.results)} cases, {checks} checks in {suites} suite file(s))")
    return "\n".join(lines)


# -- JSON --------------------------------------------------------------------------------------
def json_report(report: CheckReport) -> dict[str, Any]:
    return {"problems": report.sorted_problems(),
            "tests": {"passed": len(report.results) - len(report.failed), "failed": len(report.failed),
                      "cases": [_case_json(r) for r in report.results]}}


def _case_json(result: CaseResult) -> dict[str, Any]:
    case = result.case
    return {"suite": case.suite, "case": case.name, "file": case.file, "line": case.line,
            "passed": result.passed,
            "checks": [{"name": r.check.name, "line": r.check.line, "passed": r.passed,
                        "request": describe_request(r.check.request), "expected": dict(r.check.expect),
                        "actual": r.decision.to_dict() if r.decision else None,
                        "explanation": r.decision.reason if r.decision else r.error}
                       for r in result.results]}


# -- JUnit XML ---------------------------------------------------------------------------------
def write_junit(report: CheckReport, path: Path) -> None:
    """One <testsuite> per suite (cases are <testcase>s), plus one for the policy files."""
    root = ET.Element("testsuites", name="chatauthz check")
    policy = ET.SubElement(root, "testsuite", name="policy files", file=str(report.policy_dir),
                           tests="1", failures=str(int(bool(report.problems))), errors="0", skipped="0")
    valid = ET.SubElement(policy, "testcase", classname="policy files", name="policy files are valid")
    if report.problems:
        failure = ET.SubElement(valid, "failure", message=f"{len(report.problems)} problem(s)")
        failure.text = "\n".join(f"{p['file']}:{p['line']}: {p['message']}" for p in report.sorted_problems())
    by_suite: dict[tuple[str, str], list[CaseResult]] = {}
    for result in report.results:
        by_suite.setdefault((result.case.file, result.case.suite), []).append(result)
    for (file, suite), results in by_suite.items():
        failures = sum(not r.passed for r in results)
        element = ET.SubElement(root, "testsuite", name=suite, file=file, tests=str(len(results)),
                                failures=str(failures), errors="0", skipped="0")
        for result in results:
            case = ET.SubElement(element, "testcase", classname=suite, name=result.case.name, file=file,
                                 line=str(result.case.line))
            if not result.passed:
                failure = ET.SubElement(case, "failure", message=_failure_message(result))
                failure.text = describe_case_failure(result)
    total = sum(int(e.get("tests", "0")) for e in root)
    root.set("tests", str(total))
    root.set("failures", str(sum(int(e.get("failures", "0")) for e in root)))
    root.set("errors", "0")
    ET.indent(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def _failure_message(result: CaseResult) -> str:
    first = result.failures[0]
    return (f"{len(result.failures)} of {len(result.results)} checks failed; first: "
            f"{describe_request(first.check.request)}: expected {describe_expect(first.check.expect)}, "
            f"got {describe_decision(first.decision)}")
