#!/usr/bin/env python3
"""Server time of the capability and list questions (issue 13 targets), in-process on a Sidecar
with the embedded store, after warm-up; then the same over HTTP on a real server.

    .venv/bin/python bench/bench_capabilities.py
    .venv/bin/python bench/bench_capabilities.py --calls 2000 --skip-http

Targets: capabilities for one user in one group <= 100 us; /authorize/groups for a user in 1,000
groups <= 5 ms. The world: 100,000 users, 2,000 groups; "m" is a moderator in 1,000 of them
(participants in each), so a list question has 1,000 candidates. "cold" asks for a different
user each call (nothing remembered); "remembered" repeats one question at one revision, which
is answered from the per-revision memo. Prints p50/p99 per measure.
"""
from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sidecar.core import Sidecar  # noqa: E402
from sidecar.policy import load_policy  # noqa: E402
from sidecar.stores.sqlite import SQLiteStore  # noqa: E402


def world_ops(users: int, groups: int, member_of: int, cold: int = 0) -> list[dict[str, Any]]:
    ops: list[dict[str, Any]] = [{"op": "put_user", "uid": f"s{i}", "role": "support"} for i in range(users // 10)]
    for g in range(groups):
        guid = f"g{g:05d}"
        ops += [{"op": "put_group", "guid": guid, "owner": f"o{g}"},
                {"op": "put_member", "guid": guid, "uid": f"p{g}", "scope": "participant"}]
        if g < member_of:
            ops.append({"op": "put_member", "guid": guid, "uid": "m", "scope": "moderator"})
    # moderators c0, c1, ... of g00007: one user per call, so no answer is remembered (cold)
    ops += [{"op": "put_member", "guid": "g00007", "uid": f"c{i}", "scope": "moderator"} for i in range(cold)]
    return ops


def timed(fn: Any, calls: int, warm: bool = True) -> tuple[float, float]:
    """p50 and p99 in microseconds of fn(i) for i in range(calls) (after a warm-up, if warm)."""
    for i in range(max(3, calls // 10) if warm else 0):
        fn(i)
    samples = []
    for i in range(calls):
        started = time.perf_counter_ns()
        fn(i)
        samples.append((time.perf_counter_ns() - started) / 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--skip-http", action="store_true")
    args = parser.parse_args()
    policy = load_policy(ROOT / "policies", ROOT / "model.conf")
    with tempfile.TemporaryDirectory() as data:
        core = Sidecar(policy, SQLiteStore(Path(data) / "b.db"))
        ops = world_ops(100_000, 2_000, 1_000, cold=args.calls)
        for start in range(0, len(ops), 5000):
            chunk = ops[start:start + 5000]
            core.write(lambda tx, chunk=chunk: (chunk, None), "bench")
        core.capabilities("m", "g00007")  # the Casbin answers of this state: compiled once
        rows = [
            ("capabilities, one user in one group (cold)", 100.0,
             timed(lambda i: core.capabilities(f"c{i}", "g00007"), args.calls, warm=False)),
            ("capabilities, the same again (remembered)", 100.0,
             timed(lambda i: core.capabilities("m", "g00007"), args.calls)),
            ("capabilities, with a target (cold)", 100.0,
             timed(lambda i: core.capabilities(f"c{i}", "g00007", "p7"), args.calls, warm=False)),
            ("groups_where sendMessage, 1,000 groups", 5000.0,
             timed(lambda i: core.groups_where("m", "sendMessage", limit=1000), max(50, args.calls // 10))),
            ("members_who kickMembers", None,
             timed(lambda i: core.members_who("g00007", "kickMembers", "p7"), max(50, args.calls // 10))),
        ]
        print("in-process (Sidecar, embedded store), server time in microseconds")
        for name, target, (p50, p99) in rows:
            verdict = "" if target is None else f"  target <= {target:g}: {'met' if p50 <= target else 'MISSED'}"
            print(f"  {name:42} p50 {p50:9.1f}   p99 {p99:9.1f}{verdict}")
        core.store.close()
    if not args.skip_http:
        http_figures(args)


def http_figures(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import Server  # the tests' real-server helper: a chatauthz serve on a free loopback port
    with tempfile.TemporaryDirectory() as data:
        server = Server(Path(data) / "data", workers=1).start()
        try:
            server.ok("PUT", "/groups/hg", {"owner": "ho"})
            server.ok("POST", "/groups/hg/members", {"moderators": ["hm"], "participants": ["hp"]})
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
            headers = {"Content-Type": "application/json", "apikey": server.api_key or ""}

            def post(path: str, body: dict[str, Any]) -> None:
                conn.request("POST", path, json.dumps(body), headers)
                response = conn.getresponse()
                response.read()
                assert response.status == 200, response.status
            print("over HTTP (one worker, keep-alive http.client), round trip in microseconds")
            for name, path, body in [
                ("/authorize", "/authorize", {"uid": "hm", "action": "kickMembers", "guid": "hg", "target": "hp"}),
                ("/authorize/capabilities", "/authorize/capabilities", {"uid": "hm", "guid": "hg"}),
                ("/authorize/groups", "/authorize/groups", {"uid": "hm", "action": "sendMessage"})]:
                p50, p99 = timed(lambda i, path=path, body=body: post(path, body), args.calls)
                print(f"  {name:42} p50 {p50:9.1f}   p99 {p99:9.1f}")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
