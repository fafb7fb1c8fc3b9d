"""Policy test suites (policies/tests/*.test.yaml): their worlds and the runner that decides
their checks with the server's Engine. Kept out of sidecar.policy, which the engine imports:
suites import the engine, the policy package never does."""
from sidecar.suites.runner import Case, CaseResult, build_state, load_suite_text, load_suites, run_case, run_cases
from sidecar.suites.world import WorldBuilder

__all__ = ["Case", "CaseResult", "WorldBuilder", "build_state", "load_suite_text", "load_suites", "run_case",
           "run_cases"]
