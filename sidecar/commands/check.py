"""`chatauthz check [DIR]`: validate the policy files and model.conf, then run the test suites.

Exit codes: 0 all good, 2 usage, 3 invalid policy (a policy file, model.conf or a suite file
has problems; the valid suites still run), 4 a test failed.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from sidecar.commands.common import EXIT_INVALID_POLICY, CommandError, report_error, settings_from
from sidecar.commands.report import CheckReport, json_report, text_report, write_junit
from sidecar.errors import PolicyError
from sidecar.policy import load_policy
from sidecar.suites.runner import load_suites, run_cases

EXIT_TESTS_FAILED = 4
SUITES_DIR = "tests"


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("check", help="validate the policy files and run their test suites",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", nargs="?", help="policy folder (CHATAUTHZ_POLICIES, default the shipped one)")
    parser.add_argument("--model", help="Casbin model (default <DIR>/../model.conf)")
    parser.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    parser.add_argument("--junit", metavar="PATH", help="also write a JUnit XML report of the suites")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from(policies=args.dir, model=args.model)
        if not settings.policies.is_dir():
            raise CommandError(2, f"chatauthz check: {settings.policies} is not a folder")
    except CommandError as error:
        return report_error(error)
    report = check(settings.policies, settings.model_path)
    if args.junit:
        write_junit(report, Path(args.junit))
    print(json.dumps(json_report(report), indent=2) if args.format == "json" else text_report(report))
    if report.problems:
        return EXIT_INVALID_POLICY
    return EXIT_TESTS_FAILED if report.failed else 0


def check(policy_dir: Path, model_path: Path) -> CheckReport:
    """Every problem of the policy and its suites, and the result of every case that loaded."""
    report = CheckReport(policy_dir)
    try:
        policy = load_policy(policy_dir, model_path)
    except PolicyError as exc:
        report.problems = list(exc.problems)
        return report
    report.policy_hash = policy.content_hash
    cases, problems = load_suites(policy_dir / SUITES_DIR, policy, SUITES_DIR)
    report.problems += problems
    report.results = run_cases(cases, policy)
    return report
