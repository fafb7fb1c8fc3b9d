#!/usr/bin/env python3
"""What the engine's trace costs: Engine.decide without a trace (the hot path), with one, and
against another revision's engine, interleaved in one process so that machine noise hits all
alike (issue 11, item 1: no cost on the hot path when no trace is asked for).

    .venv/bin/python bench/bench_trace.py                      # this tree vs git's HEAD~1
    .venv/bin/python bench/bench_trace.py --rev 2fa35c5 --rounds 15

The other revision's sidecar/engine.py is loaded from `git show REV:sidecar/engine.py` as a
module of its own (it shares policy, rules and state with this tree, so it must be an engine
those still fit). Each round times --calls calls per request kind per engine, in an order that
alternates; per-call means are taken per round, and the median and min over rounds printed.
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sidecar import engine as current  # noqa: E402
from sidecar.policy import load_policy  # noqa: E402
from sidecar.state import RuntimeState  # noqa: E402


def other_engine(rev: str) -> ModuleType:
    source = subprocess.run(["git", "show", f"{rev}:sidecar/engine.py"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "engine_other.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("engine_other", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["engine_other"] = module
    spec.loader.exec_module(module)
    return module


def world(users: int) -> RuntimeState:
    state = RuntimeState()
    ops: list[dict[str, Any]] = [{"op": "put_user", "uid": f"s{i}", "role": "support"} for i in range(users // 10)]
    for g in range(100):
        ops += [{"op": "put_group", "guid": f"g{g}", "owner": "o"},
                {"op": "put_member", "guid": f"g{g}", "uid": "mod", "scope": "moderator"},
                {"op": "put_member", "guid": f"g{g}", "uid": "adm", "scope": "admin"},
                {"op": "put_member", "guid": f"g{g}", "uid": "par", "scope": "participant"}]
    for op in ops:
        state.apply(op)
    return state


KINDS: dict[str, tuple[str, str, str | None, str | None, dict[str, Any]]] = {
    "role-only allow": ("u1", "createGroup", None, None, {}),
    "role-only deny": ("s1", "createGroup", None, None, {}),
    "group sendMessage": ("par", "sendMessage", "g7", None, {"messageType": "text"}),
    "kick allowed": ("mod", "kickMembers", "g7", "par", {}),
    "kick denied": ("mod", "kickMembers", "g7", "adm", {}),
}


def per_call_ns(decide: Any, request: Any, state: RuntimeState, calls: int, **kw: Any) -> float:
    started = time.perf_counter_ns()
    for _ in range(calls):
        decide(request, state, **kw)
    return (time.perf_counter_ns() - started) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rev", default="HEAD~1", help="the other revision's engine (default HEAD~1)")
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--users", type=int, default=100000)
    args = parser.parse_args()
    policy = load_policy(ROOT / "policies", ROOT / "model.conf")
    state = world(args.users)
    other = other_engine(args.rev)
    engines = {"this tree": current.Engine(policy), f"{args.rev}": other.Engine(policy)}
    requests = {kind: (current.AuthzRequest(*fields), other.AuthzRequest(*fields)) for kind, fields in KINDS.items()}
    for kind, (mine, theirs) in requests.items():  # same answers, and warm caches
        a, b = engines["this tree"].decide(mine, state), engines[args.rev].decide(theirs, state)
        assert (a.allowed, a.code, a.reason) == (b.allowed, b.code, b.reason), (kind, a, b)
    times: dict[tuple[str, str], list[float]] = {}
    for round_no in range(args.rounds):
        order = list(engines) if round_no % 2 == 0 else list(reversed(engines))
        for kind, (mine, theirs) in requests.items():
            for name in order:
                request = mine if name == "this tree" else theirs
                times.setdefault((kind, name), []).append(
                    per_call_ns(engines[name].decide, request, state, args.calls))
            times.setdefault((kind, "this tree, traced"), []).append(per_call_ns(
                lambda r, s: engines["this tree"].decide(r, s, []), mine, state, args.calls // 4))
    print(f"Engine.decide, ns per call: median (min) over {args.rounds} rounds of {args.calls} calls")
    print(f"{'request':20} {'this tree':>16} {args.rev:>16} {'ratio':>7} {'traced':>16}")
    for kind in KINDS:
        cells = [times[(kind, name)] for name in ("this tree", args.rev, "this tree, traced")]
        shown = [f"{statistics.median(c):8.0f} ({min(c):5.0f})" for c in cells]
        ratio = statistics.median(cells[0]) / statistics.median(cells[1])
        print(f"{kind:20} {shown[0]:>16} {shown[1]:>16} {ratio:7.2f} {shown[2]:>16}")


if __name__ == "__main__":
    main()
