#!/usr/bin/env python3
"""Distributed-mode benchmark: write propagation between sidecars, and a full resync at scale.

(a) Propagation. Starts a redis-server (free loopback port, no persistence) and two sidecars
    (`chatauthz serve --redis-url ...`, 1 worker each, default sync settings) as processes. For N
    writes (default 500) it changes something through sidecar A (alternately a role's
    sendMessage permission and a member's scope) and, from the moment A acknowledged the write,
    polls sidecar B's POST /authorize on one keep-alive connection, without atLeastRevision,
    until B's decision changes. Prints p50/p90/p99/max of that delay in ms (it includes one poll
    round trip, also printed), and the write latency on A.
(b) Resync at scale. Builds a RuntimeState in memory with U users and M memberships (over G
    groups, each with an owner), writes it into Redis under a fresh prefix with the store's own
    RedisStore.reseed(), then, in a fresh child process (so the memory figures are its own),
    times RedisStore.load() -- what a sidecar does on a full resync -- and reports the seconds
    and the child's VmRSS before and after. Optionally (--sidecar-start) also starts a real
    sidecar on that prefix and times it until /health/ready answers 200.

    .venv/bin/python bench/bench_propagation.py                          # 500 writes, 1M + 1M
    .venv/bin/python bench/bench_propagation.py --writes 100 --users 100000 --memberships 100000
    .venv/bin/python bench/bench_propagation.py --skip-load               # propagation only

Only loopback addresses are contacted; every loop is bounded in time; every process started
here is ended here (by its own pid / process group).
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from redis_support import TEST_API_KEY, RedisServer, SidecarProcess, unique  # noqa: E402

POLL_TIMEOUT_S = 5.0
ROLES = ("default", "support", "restricted")


# -- HTTP on one keep-alive connection ---------------------------------------------------------
class Conn:
    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"apikey": TEST_API_KEY, "Content-Type": "application/json"}
        for attempt in range(2):
            try:
                self.conn.request(method, path, body=data, headers=headers)
                response = self.conn.getresponse()
                return response.status, json.loads(response.read() or b"null")
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, payload = self.call(method, path, body)
        if status != 200:
            raise SystemExit(f"{method} {path} -> {status} {payload}")
        return payload

    def close(self) -> None:
        self.conn.close()


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def describe(values_s: list[float]) -> str:
    ms = [v * 1000 for v in values_s]
    return (f"p50 {pct(ms, 50):.2f} ms  p90 {pct(ms, 90):.2f} ms  p99 {pct(ms, 99):.2f} ms  "
            f"max {max(ms):.2f} ms  mean {statistics.fmean(ms):.2f} ms  (n={len(ms)})")


# -- (a) propagation ---------------------------------------------------------------------------
def bench_propagation(server: RedisServer, base: Path, writes: int, sync_interval: float | None) -> None:
    prefix = unique("bench") + ":"
    interval = 1.0 if sync_interval is None else sync_interval  # 1.0 s is the product's default
    a = SidecarProcess(base, server.url, name="a", prefix=prefix, redis_timeout_s=1.0, sync_interval_s=interval)
    b = SidecarProcess(base, server.url, name="b", prefix=prefix, redis_timeout_s=1.0, sync_interval_s=interval)
    try:
        for sidecar in (a, b):
            sidecar.launch()
        for sidecar in (a, b):
            sidecar.wait_live()
        ca, cb = Conn(a.port), Conn(b.port)
        role, uid, guid, owner, member = (unique(x) for x in ("role", "user", "group", "owner", "member"))
        ca.ok("POST", "/roles", {"role": role, "name": "Propagation"})
        ca.ok("PUT", f"/users/{uid}", {"role": role})
        ca.ok("PUT", f"/groups/{guid}", {"owner": owner})
        ca.ok("PUT", f"/groups/{guid}/members/{member}", {"scope": "participant"})
        role_check = {"uid": uid, "action": "sendMessage", "context": {"messageType": "text", "receiverType": "user"}}
        scope_check = {"uid": member, "action": "editGroup", "guid": guid}
        # warm up both sides (Casbin gates, connections)
        for _ in range(50):
            cb.ok("POST", "/authorize", role_check)
            cb.ok("POST", "/authorize", scope_check)

        delays: list[float] = []
        write_latency: list[float] = []
        poll_rtt: list[float] = []
        first_poll_hits = 0
        allowed_role, scope = True, "participant"
        for i in range(writes):
            if i % 2 == 0:
                allowed_role = not allowed_role
                path, body = f"/roles/{role}/permissions", {"permissions": {"sendMessage":
                                                                            "allow" if allowed_role else "deny"}}
                method, check, expected = "PUT", role_check, allowed_role
            else:
                scope = "moderator" if scope == "participant" else "participant"
                path, body = f"/groups/{guid}/members/{member}", {"scope": scope}
                method, check, expected = "PUT", scope_check, scope == "moderator"
            started = time.perf_counter()
            ca.ok(method, path, body)
            acked = time.perf_counter()
            write_latency.append(acked - started)
            polls = 0
            while True:
                before = time.perf_counter()
                decision = cb.ok("POST", "/authorize", check)["data"]
                after = time.perf_counter()
                poll_rtt.append(after - before)
                polls += 1
                if decision["allowed"] is expected:
                    delays.append(after - acked)
                    first_poll_hits += polls == 1
                    break
                if after - acked > POLL_TIMEOUT_S:
                    raise SystemExit(f"write {i}: B did not change its decision within {POLL_TIMEOUT_S}s: {decision}")
        ca.close()
        cb.close()
        print(f"propagation A -> B over {writes} acknowledged writes (B polled on a keep-alive connection, "
              f"no atLeastRevision):")
        print(f"  delay ack->changed decision: {describe(delays)}")
        print(f"  B poll round trip:           {describe(poll_rtt)}")
        print(f"  write latency on A:          {describe(write_latency)}")
        print(f"  B already changed at the first poll after the ack: {first_poll_hits}/{writes}")
    finally:
        a.stop()
        b.stop()


# -- (b) resync at scale -----------------------------------------------------------------------
def build_state(users: int, memberships: int, groups: int) -> Any:
    from sidecar.state import RuntimeState
    state = RuntimeState(revision=1)
    state.users = {f"u{i:07d}": ROLES[i % 3] for i in range(users)}
    per_group = max(1, memberships // groups)
    made = 0
    for g in range(groups):
        guid = f"g{g:06d}"
        members: dict[str, str] = {}
        for k in range(per_group):
            if made >= memberships:
                break
            uid = f"u{(g * per_group + k) % max(users, 1):07d}"
            members[uid] = "admin" if k == 0 else ("moderator" if k % 10 == 0 else "participant")
            made += 1
        if members:
            state.members[guid] = members
            state.owners[guid] = next(iter(members))
    g = groups
    while made < memberships:  # any remainder
        guid = f"g{g:06d}"
        state.members.setdefault(guid, {})[f"u{made % max(users, 1):07d}"] = "participant"
        state.owners.setdefault(guid, f"u{made % max(users, 1):07d}")
        made += 1
        g += 1
    return state


def child_load(url: str, prefix: str) -> None:
    """Run in a fresh process: time RedisStore.load() and report VmRSS before/after as JSON."""
    import gc

    from sidecar.stores.redisstore import RedisStore
    store = RedisStore(url, prefix, timeout_s=30.0)
    store.revision()  # connect first: the connection is not part of the load
    gc.collect()
    rss_before = vm_rss_kib()
    started = time.perf_counter()
    state = store.load()
    elapsed = time.perf_counter() - started
    rss_after = vm_rss_kib()
    counts = {"users": len(state.users), "memberships": sum(len(m) for m in state.members.values()),
              "groups": len(state.owners), "revision": state.revision}
    print(json.dumps({"seconds": elapsed, "rss_before_kib": rss_before, "rss_after_kib": rss_after,
                      "peak_rss_kib": vm_hwm_kib(), **counts}))
    store.close()


def vm_rss_kib() -> int:
    return _status_field("VmRSS")


def vm_hwm_kib() -> int:
    return _status_field("VmHWM")


def _status_field(name: str, pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0


def bench_load(server: RedisServer, base: Path, users: int, memberships: int, groups: int, repeats: int,
               sidecar_start: bool) -> None:
    from sidecar.stores.redisstore import RedisStore
    prefix = unique("scale") + ":"
    started = time.perf_counter()
    state = build_state(users, memberships, groups)
    built = time.perf_counter() - started
    n_members = sum(len(m) for m in state.members.values())
    print(f"\nresync at scale: {len(state.users):,} users, {n_members:,} memberships in {len(state.owners):,} groups")
    print(f"  built in memory in {built:.1f} s")
    store = RedisStore(server.url, prefix, timeout_s=120.0)
    started = time.perf_counter()
    assert store.reseed(state), "reseed refused (the prefix is not empty?)"
    print(f"  written to Redis with RedisStore.reseed() in {time.perf_counter() - started:.1f} s; "
          f"Redis used_memory {server.client().info('memory')['used_memory_human']}")
    store.close()
    del state
    results = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, __file__, "--child-load", server.url, prefix], capture_output=True,
                             text=True, timeout=600, cwd=str(ROOT))
        if out.returncode != 0:
            raise SystemExit(f"child load failed: {out.stderr[-3000:]}")
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    for r in results:
        assert r["users"] == users and r["memberships"] == n_members, r
    seconds = [r["seconds"] for r in results]
    print(f"  RedisStore.load() (a sidecar's full resync), {repeats} fresh processes: "
          f"{', '.join(f'{s:.2f}' for s in seconds)} s (median {statistics.median(seconds):.2f} s)")
    last = results[-1]
    print(f"  process RSS: {last['rss_before_kib'] / 1024:.0f} MiB before load, "
          f"{last['rss_after_kib'] / 1024:.0f} MiB after (+{(last['rss_after_kib'] - last['rss_before_kib']) / 1024:.0f} MiB), "
          f"peak {last['peak_rss_kib'] / 1024:.0f} MiB")
    if sidecar_start:
        sidecar = SidecarProcess(base, server.url, name="scale", prefix=prefix, redis_timeout_s=30.0)
        try:
            started = time.perf_counter()
            sidecar.launch()
            deadline = started + 300
            while True:
                try:
                    code, body = sidecar.ready()
                    if code == 200 and body["revision"] == 1:
                        break
                except Exception:  # noqa: BLE001 - not up yet
                    pass
                if not sidecar.running:
                    raise SystemExit(f"the sidecar exited: {sidecar.stderr()[-2000:]}")
                if time.perf_counter() > deadline:
                    raise SystemExit("the sidecar was not ready within 300 s")
                time.sleep(0.05)
            ready_s = time.perf_counter() - started
            rss = {pid: _status_field("VmRSS", pid) for pid in sidecar.pids()}
            print(f"  a sidecar process (`serve --redis-url`) from launch to /health/ready 200: {ready_s:.2f} s; "
                  f"RSS per process: {', '.join(f'{v / 1024:.0f} MiB' for v in sorted(rss.values()))}")
        finally:
            sidecar.stop()


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--child-load":
        child_load(sys.argv[2], sys.argv[3])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writes", type=int, default=500, help="acknowledged writes to time (default 500)")
    parser.add_argument("--sync-interval", type=float, default=None,
                        help="CHATAUTHZ_SYNC_INTERVAL_S for the two sidecars (default 1.0, the product default)")
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--memberships", type=int, default=1_000_000)
    parser.add_argument("--groups", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3, help="full loads to time (default 3)")
    parser.add_argument("--skip-propagation", action="store_true")
    parser.add_argument("--skip-load", action="store_true")
    parser.add_argument("--sidecar-start", action=argparse.BooleanOptionalAction, default=True,
                        help="also time a sidecar process from launch to ready on the big state (default on)")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-propagation-"))
    server = RedisServer(base)
    try:
        server.start()
        print(f"redis-server {server.client().info('server')['redis_version']} on {server.url}; "
              f"{os.cpu_count()} CPUs; python {sys.version.split()[0]}")
        if not args.skip_propagation:
            bench_propagation(server, base, args.writes, args.sync_interval)
        if not args.skip_load:
            bench_load(server, base, args.users, args.memberships, args.groups, args.repeats, args.sidecar_start)
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
