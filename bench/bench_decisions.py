#!/usr/bin/env python3
"""Decision benchmark: in-process latency at several state sizes, then /authorize over HTTP.

The full suite (targets, memory and load time in fresh processes, Cerbos side by side) is
bench/run.py, which reuses this file's workload (state ops, request kinds, timing helpers).

(a) Builds a RuntimeState with ops (RuntimeState.apply) for each size and times Engine.decide,
    then the full Sidecar.decide path on an SQLiteStore in a temp folder (which adds the SQLite
    `PRAGMA data_version` check and the response body), with time.perf_counter_ns per call.
(b) Serves the app (`chatauthz serve --workers 2`, its default WSGI server) on a free loopback port with a temp data
    folder, fills it through the management API, then drives POST /authorize with N keep-alive
    connections (worker processes x threads, http.client) for a fixed time, checking that every
    answer is a 200 with the expected decision. If `wrk` is on PATH it is run too (status and
    allowed-ratio checks only).

    .venv/bin/python bench/bench_decisions.py                       # 1k, 100k, 1m + HTTP
    .venv/bin/python bench/bench_decisions.py --sizes 1k --http-seconds 3
    .venv/bin/python bench/bench_decisions.py --sizes 50000:5000:50000 --skip-http

A size is a preset (1k = 1,000 users / 100 groups / 1,000 memberships; 100k = 100,000 /
10,000 / 100,000; 1m = 1,000,000 / 10,000 / 100,000) or USERS:GROUPS:MEMBERSHIPS.
Only loopback addresses are contacted; every loop is bounded in time.
"""
from __future__ import annotations

import argparse
import gc
import http.client
import json
import multiprocessing
import os
import random
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sidecar.config import Settings  # noqa: E402
from sidecar.core import Sidecar  # noqa: E402
from sidecar.engine import AuthzRequest, Engine  # noqa: E402
from sidecar.policy import load_policy  # noqa: E402
from sidecar.state import RuntimeState  # noqa: E402
from sidecar.stores.sqlite import SQLiteStore  # noqa: E402

PRESETS = {"1k": (1_000, 100, 1_000), "100k": (100_000, 10_000, 100_000), "1m": (1_000_000, 10_000, 100_000)}
# Roles users are spread over: three from policies/roles.yaml and two made at runtime.
ROLES = ("default", "support", "restricted", "trainee", "agent")
RUNTIME_ROLES = {
    "trainee": {"createGroup": "deny", "sendMessage.allowedMessageTypes": ["text", "image"]},
    "agent": {"blockUser": "deny", "initiateCall.allowedReceiverTypes": ["user"]},
}
SAMPLES_PER_KIND = 1_000  # distinct requests of each kind, cycled through while timing


# -- sizes and state ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Size:
    label: str
    users: int
    groups: int
    memberships: int

    @property
    def per_group(self) -> int:
        return max(4, self.memberships // max(1, self.groups))


def parse_sizes(text: str) -> list[Size]:
    sizes = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        if item.lower() in PRESETS:
            users, groups, members = PRESETS[item.lower()]
        else:
            try:
                users, groups, members = (int(x) for x in item.split(":"))
            except ValueError:
                raise SystemExit(f"bad size {item!r}: use 1k, 100k, 1m or USERS:GROUPS:MEMBERSHIPS") from None
        if users < 10 or groups < 1 or members < 4 * groups or members > users * groups:
            raise SystemExit(f"bad size {item!r}: need users >= 10, groups >= 1, memberships >= 4 x groups")
        sizes.append(Size(item, users, groups, members))
    return sizes


def human(n: int) -> str:
    for unit, div in (("M", 1_000_000), ("k", 1_000)):
        if n >= div and n % (div // 10) == 0:
            return f"{n / div:g}{unit}"
    return str(n)


def role_of(i: int) -> str:
    return ROLES[i % len(ROLES)]


def group_members(size: Size, g: int) -> list[tuple[int, str]]:
    """Group g's members as (user index, scope): owner (admin), one admin, one moderator, participants."""
    count = size.per_group
    base = (g * count) % size.users
    members = [((base + k) % size.users, "participant") for k in range(count)]
    members[0] = (members[0][0], "admin")  # the owner
    members[1] = (members[1][0], "admin")
    members[2] = (members[2][0], "moderator")
    return members


def state_ops(size: Size) -> Iterable[dict[str, Any]]:
    """Every op that builds the benchmark state, in the order a real deployment would write them."""
    now = int(time.time())
    for role, values in RUNTIME_ROLES.items():
        yield {"op": "put_role", "role": role, "record": {"role": role, "name": role.title(), "createdAt": now}}
        yield {"op": "set_role_permissions", "role": role, "values": values}
    for i in range(size.users):
        yield {"op": "put_user", "uid": f"u{i}", "role": role_of(i)}
    for g in range(size.groups):
        guid = f"g{g}"
        members = group_members(size, g)
        yield {"op": "put_group", "guid": guid, "owner": f"u{members[0][0]}"}
        for index, scope in members:
            yield {"op": "put_member", "guid": guid, "uid": f"u{index}", "scope": scope}
        if g % 100 == 7:  # 1% of groups override a scope key (adds Casbin lines)
            yield {"op": "set_scope_permissions", "guid": guid, "scope": "participant",
                   "values": {"sendMessage.allowedMessageTypes": ["text", "image"], "addReaction": "deny"}}


def build_state(size: Size) -> RuntimeState:
    state = RuntimeState()
    apply = state.apply
    for op in state_ops(size):
        apply(op)
    state.revision = 1
    return state


# -- the representative requests ---------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    request: AuthzRequest
    allowed: bool
    code: str | None

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"uid": self.request.uid, "action": self.request.action}
        if self.request.guid:
            body["guid"] = self.request.guid
        if self.request.target:
            body["target"] = self.request.target
        if self.request.context:
            body["context"] = dict(self.request.context)
        return body


KINDS = ("role-only allow", "role-only deny", "group sendMessage", "kick w/ clearance", "kick denied")


def make_checks(size: Size, kind: str, count: int, rng: random.Random) -> list[Check]:
    checks = []
    for _ in range(count):
        if kind == "role-only allow":  # direct text message, role layer only (+ constraint keys)
            i = rng.randrange(size.users)
            req = AuthzRequest(f"u{i}", "sendMessage", target=f"u{rng.randrange(size.users)}",
                               context={"messageType": "text"})
            checks.append(Check(req, True, None))
        elif kind == "role-only deny":  # a support agent may not create groups (roles.yaml)
            i = rng.randrange(size.users // len(ROLES)) * len(ROLES) + ROLES.index("support")
            checks.append(Check(AuthzRequest(f"u{i}", "createGroup"), False, "ERR_PERMISSION_DENIED"))
        else:
            g = rng.randrange(size.groups)
            members = group_members(size, g)
            moderator = f"u{members[2][0]}"
            participant = f"u{members[rng.randrange(3, len(members))][0]}"
            if kind == "group sendMessage":
                req = AuthzRequest(participant, "sendMessage", guid=f"g{g}", context={"messageType": "text"})
                checks.append(Check(req, True, None))
            elif kind == "kick w/ clearance":
                checks.append(Check(AuthzRequest(moderator, "kickMembers", guid=f"g{g}", target=participant),
                                    True, None))
            else:  # a moderator kicking an admin
                checks.append(Check(AuthzRequest(moderator, "kickMembers", guid=f"g{g}",
                                                 target=f"u{members[1][0]}"), False, "ERR_GROUP_NO_CLEARANCE"))
    return checks


def verify(decide: Callable[[Check], tuple[bool, str | None]], checks: list[Check], what: str) -> None:
    for check in checks:
        got = decide(check)
        if got != (check.allowed, check.code):
            raise SystemExit(f"{what}: {check.request} decided {got}, expected {(check.allowed, check.code)}")


# -- timing ------------------------------------------------------------------------------------
def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def time_calls(fn: Callable[[Any], Any], items: list[Any], iterations: int) -> list[float]:
    """Per-call latency in µs, after a warm-up pass over every item."""
    for item in items:
        fn(item)
    clock = time.perf_counter_ns
    n = len(items)
    samples = [0] * iterations
    for i in range(iterations):
        item = items[i % n]
        start = clock()
        fn(item)
        samples[i] = clock() - start
    samples.sort()
    return [s / 1000 for s in samples]


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_inprocess(sizes: list[Size], iterations: int, skip_sidecar: bool) -> list[dict[str, Any]]:
    policy = load_policy(ROOT / "policies", ROOT / "model.conf")
    rows: list[dict[str, Any]] = []
    for size in sizes:
        print(f"\n== {size.label}: {size.users:,} users, {size.groups:,} groups, "
              f"{size.groups * size.per_group:,} memberships ==", flush=True)
        started = time.perf_counter()
        state = build_state(size)
        build_s = time.perf_counter() - started
        print(f"   state built from ops in {build_s:.2f} s (max RSS so far {rss_mb():,.0f} MB)", flush=True)
        rng = random.Random(42)
        checks = {kind: make_checks(size, kind, SAMPLES_PER_KIND, rng) for kind in KINDS}

        engine = Engine(policy)

        def engine_decide(check: Check, engine: Engine = engine, state: RuntimeState = state) -> Any:
            return engine.decide(check.request, state)

        for kind in KINDS:
            verify(lambda c: (lambda d: (d.allowed, d.code))(engine_decide(c)), checks[kind], f"Engine {kind}")
            lat = time_calls(engine_decide, checks[kind], iterations)
            rows.append(_row(size, "Engine.decide", kind, lat))

        # A policy change (one role permission) makes the next decision rebuild the Casbin enforcer.
        state.apply({"op": "set_role_permissions", "role": "agent", "values": {"addReaction": "deny"}})
        first = checks["role-only allow"][0]
        start = time.perf_counter_ns()
        engine.decide(first.request, state)
        rebuild_ms = (time.perf_counter_ns() - start) / 1e6
        print(f"   first decision after a role-permission change (Casbin rebuild): {rebuild_ms:.1f} ms", flush=True)
        state.apply({"op": "unset_role_permission", "role": "agent", "key": "addReaction"})

        if not skip_sidecar:
            rows += bench_sidecar(size, policy, checks, iterations)
        del state, engine, checks
        gc.collect()
    return rows


def bench_sidecar(size: Size, policy: Any, checks: dict[str, list[Check]], iterations: int) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="chatauthz-bench-") as tmp:
        store = SQLiteStore(Path(tmp) / "chatauthz.sqlite3")
        started = time.perf_counter()
        chunk: list[dict[str, Any]] = []
        for op in state_ops(size):
            chunk.append(op)
            if len(chunk) >= 20_000:
                store.write(lambda ops=chunk: ops, "bench")
                chunk = []
        if chunk:
            store.write(lambda ops=chunk: ops, "bench")
        write_s = time.perf_counter() - started
        started = time.perf_counter()
        sidecar = Sidecar(policy, store)
        load_s = time.perf_counter() - started
        print(f"   SQLite store written in {write_s:.2f} s, Sidecar loaded it in {load_s:.2f} s "
              f"(max RSS so far {rss_mb():,.0f} MB)", flush=True)

        def sidecar_decide(check: Check, sidecar: Sidecar = sidecar) -> Any:
            return sidecar.decide(check.request)

        for kind in KINDS:
            verify(lambda c: (lambda d: (d["allowed"], d.get("code")))(sidecar_decide(c)), checks[kind],
                   f"Sidecar {kind}")
            lat = time_calls(sidecar_decide, checks[kind], iterations)
            rows.append(_row(size, "Sidecar.decide", kind, lat))
        store.close()
        del sidecar
    return rows


def _row(size: Size, path: str, kind: str, lat: list[float]) -> dict[str, Any]:
    row = {"size": size, "path": path, "kind": kind, "n": len(lat), "p50": percentile(lat, 50),
           "p99": percentile(lat, 99), "p999": percentile(lat, 99.9), "mean": statistics.fmean(lat)}
    print(f"   {path:<15} {kind:<18} p50 {row['p50']:7.1f} µs   p99 {row['p99']:7.1f} µs", flush=True)
    return row


def print_inprocess_table(rows: list[dict[str, Any]]) -> None:
    print("\n(a) In-process decision latency (µs per call; perf_counter_ns, GC on, 1 thread)")
    header = f"{'users/groups/members':<22} {'path':<15} {'request':<18} {'p50':>7} {'p99':>7} {'p99.9':>7} {'mean':>7}"
    print(header)
    print("-" * len(header))
    last = None
    for row in rows:
        size = row["size"]
        label = f"{human(size.users)}/{human(size.groups)}/{human(size.groups * size.per_group)}"
        if last is not None and last != (label, row["path"]):
            print()
        last = (label, row["path"])
        print(f"{label:<22} {row['path']:<15} {row['kind']:<18} {row['p50']:7.1f} {row['p99']:7.1f} "
              f"{row['p999']:7.1f} {row['mean']:7.1f}")


# -- (b) HTTP ----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def chatauthz_command() -> list[str]:
    beside = Path(sys.executable).parent / "chatauthz"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("chatauthz")
    return [found] if found else [sys.executable, "-m", "sidecar"]


def call(port: int, key: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, data, {"apikey": key, "Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


def fill_served(port: int, key: str, size: Size) -> None:
    """The HTTP benchmark's state, written through the management API (a small size)."""
    for role, values in RUNTIME_ROLES.items():
        _ok(call(port, key, "POST", "/roles", {"role": role, "name": role.title()}))
        _ok(call(port, key, "PUT", f"/roles/{role}/permissions", {"permissions": values}))
    for i in range(size.users):
        if role_of(i) != "default":
            _ok(call(port, key, "PUT", f"/users/u{i}", {"role": role_of(i)}))
    for g in range(size.groups):
        members = group_members(size, g)
        _ok(call(port, key, "PUT", f"/groups/g{g}", {"owner": f"u{members[0][0]}"}))
        for index, scope in members[1:]:
            _ok(call(port, key, "PUT", f"/groups/g{g}/members/u{index}", {"scope": scope}))


def _ok(result: tuple[int, Any]) -> None:
    status, body = result
    if status != 200:
        raise SystemExit(f"setting up the served app failed: {status} {body}")


def _load_worker(args: tuple[int, str, list[tuple[bytes, bool, str | None]], int, int, float, float]) -> dict[str, Any]:
    """One load-generator process: `threads` keep-alive connections until the deadline."""
    port, key, bodies, threads, seed, measure_from, measure_to = args
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    results: list[dict[str, Any]] = []

    def run(offset: int) -> None:
        latencies: list[int] = []
        errors = mismatches = 0
        first_problem = ""
        headers = {"apikey": key, "Content-Type": "application/json", "Connection": "keep-alive"}
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        i = offset
        clock = time.perf_counter_ns
        while True:
            now = time.time()
            if now >= measure_to:
                break
            body, allowed, code = bodies[i % len(bodies)]
            i += 1
            start = clock()
            try:
                conn.request("POST", "/authorize", body, headers)
                response = conn.getresponse()
                payload = response.read()
                status = response.status
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                if now >= measure_from:
                    errors += 1
                    first_problem = first_problem or f"{type(exc).__name__}: {exc}"
                continue
            elapsed = clock() - start
            if now < measure_from:
                continue  # warm-up
            if status != 200:
                errors += 1
                first_problem = first_problem or f"HTTP {status}: {payload[:200]!r}"
                continue
            data = json.loads(payload)["data"]
            if data["allowed"] is not allowed or data.get("code") != code:
                mismatches += 1
                first_problem = first_problem or f"unexpected decision {data} for {body!r}"
            latencies.append(elapsed)
        conn.close()
        results.append({"latencies": latencies, "errors": errors, "mismatches": mismatches,
                        "problem": first_problem})

    pool = [threading.Thread(target=run, args=(seed * 1000 + t * 7,)) for t in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    merged: dict[str, Any] = {"latencies": [], "errors": 0, "mismatches": 0, "problem": ""}
    for r in results:
        merged["latencies"] += r["latencies"]
        merged["errors"] += r["errors"]
        merged["mismatches"] += r["mismatches"]
        merged["problem"] = merged["problem"] or r["problem"]
    return merged


def drive(port: int, key: str, bodies: list[tuple[bytes, bool, str | None]], connections: int,
          processes: int, seconds: float, warmup: float) -> dict[str, Any]:
    processes = max(1, min(processes, connections))
    per = [connections // processes + (1 if p < connections % processes else 0) for p in range(processes)]
    measure_from = time.time() + 1.0 + warmup  # 1 s for the processes to start
    measure_to = measure_from + seconds
    jobs = [(port, key, bodies, per[p], p, measure_from, measure_to) for p in range(processes)]
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        parts = pool.map(_load_worker, jobs)
    latencies = sorted(x for part in parts for x in part["latencies"])
    ms = [x / 1e6 for x in latencies]
    return {"connections": connections, "processes": processes, "requests": len(ms),
            "rps": len(ms) / seconds, "p50": percentile(ms, 50), "p99": percentile(ms, 99),
            "max": ms[-1] if ms else float("nan"), "errors": sum(p["errors"] for p in parts),
            "mismatches": sum(p["mismatches"] for p in parts),
            "problem": next((p["problem"] for p in parts if p["problem"]), "")}


def run_wrk(port: int, key: str, bodies: list[tuple[bytes, bool, str | None]], connections: int,
            seconds: float, tmp: Path) -> str:
    """wrk with a Lua script rotating the same bodies; checks statuses and the share of allows."""
    lua_bodies = ",\n".join("  " + json.dumps(b.decode()) for b, _, _ in bodies)
    expected = sum(1 for _, allowed, _ in bodies if allowed) / len(bodies)
    script = tmp / "authorize.lua"
    script.write_text(f"""
local bodies = {{
{lua_bodies}
}}
local i = 0
local threads = {{}}
function setup(thread) table.insert(threads, thread) end
function init(args) non200 = 0; allowed = 0; denied = 0; i = math.random(#bodies) end
function request()
  i = i % #bodies + 1
  return wrk.format("POST", "/authorize", {{["apikey"] = "{key}", ["Content-Type"] = "application/json"}}, bodies[i])
end
function response(status, headers, body)
  if status ~= 200 then non200 = non200 + 1
  elseif string.find(body, '"allowed":true', 1, true) then allowed = allowed + 1
  else denied = denied + 1 end
end
function done(summary, latency, requests)
  local n, a, d = 0, 0, 0
  for _, t in ipairs(threads) do n = n + t:get("non200"); a = a + t:get("allowed"); d = d + t:get("denied") end
  io.write(string.format("wrk check: non-200 %d, allowed %d, denied %d (allowed share %.3f, expected {expected:.3f})\\n", n, a, d, a / math.max(1, a + d)))
  io.write(string.format("wrk latency p50 %.2f ms, p99 %.2f ms\\n", latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
""")
    threads = max(1, min(2, connections))
    out = subprocess.run(["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{int(seconds)}s",
                          "-s", str(script), f"http://127.0.0.1:{port}/authorize"],
                         capture_output=True, text=True, timeout=seconds + 60)
    return out.stdout + out.stderr


def bench_http(args: argparse.Namespace) -> None:
    size = Size("http", 1_000, 100, 1_000)
    with tempfile.TemporaryDirectory(prefix="chatauthz-http-") as tmp:
        port, key = free_port(), secrets.token_urlsafe(24)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHATAUTHZ_")}
        env["CHATAUTHZ_API_KEY"] = key
        log = open(Path(tmp) / "server.log", "w")  # noqa: SIM115 - closed below
        serve = ["serve", "--workers", str(args.workers), "--port", str(port), "--data-dir", str(Path(tmp) / "data")]
        serve += ["--threads", str(args.threads)] if args.threads else []
        serve += ["--server", args.server] if args.server else []
        server = subprocess.Popen([*chatauthz_command(), *serve],
                                  env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if call(port, key, "GET", "/health/ready")[0] == 200:
                        break
                except OSError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    raise SystemExit("the server did not start:\n" + (Path(tmp) / "server.log").read_text())
                time.sleep(0.1)
            started = time.perf_counter()
            fill_served(port, key, size)
            shown = " ".join(serve[:3] + serve[7:])
            print(f"\n(b) served app: `chatauthz {shown}` (server {args.server or Settings().server}) on "
                  f"127.0.0.1:{port}; state {size.users:,} users / {size.groups} groups / "
                  f"{size.groups * size.per_group:,} memberships written through the API in "
                  f"{time.perf_counter() - started:.1f} s", flush=True)
            rng = random.Random(7)
            checks = [c for kind in KINDS for c in make_checks(size, kind, 50, rng)]
            rng.shuffle(checks)
            bodies = [(json.dumps(c.body(), separators=(",", ":")).encode(), c.allowed, c.code) for c in checks]
            results = []
            for connections in args.connections:
                print(f"   driving {connections} keep-alive connections for {args.http_seconds:g} s "
                      f"(+{args.warmup:g} s warm-up) ...", flush=True)
                results.append(drive(port, key, bodies, connections, args.client_processes,
                                     args.http_seconds, args.warmup))
            print(f"\n(b) POST /authorize throughput (mix of the 5 request kinds; {args.http_seconds:g} s per row; "
                  f"Python http.client load generator on the same {os.cpu_count()} cores)")
            header = (f"{'connections':>11} {'client procs':>12} {'requests':>9} {'req/s':>8} {'p50 ms':>7} "
                      f"{'p99 ms':>7} {'max ms':>7} {'non-200':>7} {'wrong':>6}")
            print(header)
            print("-" * len(header))
            for r in results:
                print(f"{r['connections']:>11} {r['processes']:>12} {r['requests']:>9,} {r['rps']:>8,.0f} "
                      f"{r['p50']:>7.2f} {r['p99']:>7.2f} {r['max']:>7.1f} {r['errors']:>7} {r['mismatches']:>6}")
            problems = [r["problem"] for r in results if r["problem"]]
            if problems:
                print("   first problem seen:", problems[0])
            if shutil.which("wrk") and not args.no_wrk:
                for connections in args.connections:
                    print(f"\n   wrk -c {connections} -d {int(args.http_seconds)}s (same bodies):")
                    print("   " + run_wrk(port, key, bodies, connections, args.http_seconds, Path(tmp))
                          .strip().replace("\n", "\n   "))
            else:
                print("   (wrk " + ("skipped: --no-wrk" if args.no_wrk else "is not on PATH") +
                      ": only the Python load generator ran)")
            if any(r["errors"] or r["mismatches"] for r in results):
                raise SystemExit(1)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
            log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1k,100k,1m",
                        help="comma-separated presets (1k, 100k, 1m) or USERS:GROUPS:MEMBERSHIPS")
    parser.add_argument("--iterations", type=int, default=20_000, help="timed calls per request kind")
    parser.add_argument("--skip-inprocess", action="store_true")
    parser.add_argument("--skip-sidecar", action="store_true", help="time Engine.decide only")
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--http-seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--connections", default="16,64", help="comma-separated connection counts")
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, help="threads per worker (default: the sidecar's own)")
    parser.add_argument("--server", choices=("granian", "gunicorn"), help="WSGI server (default: the sidecar's own)")
    parser.add_argument("--no-wrk", action="store_true", help="do not run wrk even if it is on PATH")
    args = parser.parse_args()
    args.connections = [int(c) for c in args.connections.split(",") if c.strip()]
    print(f"chatauthz decision benchmark: Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
          f"policy {ROOT / 'policies'}")
    Settings()  # the defaults must be valid here too
    if not args.skip_inprocess:
        rows = bench_inprocess(parse_sizes(args.sizes), args.iterations, args.skip_sidecar)
        print_inprocess_table(rows)
    if not args.skip_http:
        bench_http(args)


if __name__ == "__main__":
    main()
