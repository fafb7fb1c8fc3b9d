#!/usr/bin/env python3
"""Write throughput through Redis (issue 12, item 2): acknowledged writes/s, their latency, that
none is lost, and how fast another sidecar decides on a write, for this tree and for another
revision of the project, in one run on one machine.

For each tree (this one, then --rev's, exported with `git archive` into a temporary folder; its
sidecars run from there): a fresh redis-server (loopback, no persistence) and --sidecars sidecar
processes (`serve --redis-url`, 1 worker, --threads threads, the default 1 s sync interval) on
it. Each of --writers writers owns one group (with an owner) and 50 users; for --seconds it
writes, on one kept-alive connection (--new-connections: a new one per write; see HConn) to its
sidecar (writer i -> sidecar i mod N), alternately
a user's role (to another role than the last) and that user's scope in its group on behalf of
the owner (another scope than the last: the engine checks changeScope/addMembers first).
Writers are unrelated to each other; the writers of one sidecar run in one client process of
their own (so that the client's GIL is not what is measured).

Meanwhile a probe writes on sidecar 0 (alternately a role's sendMessage permission and a
member's scope, as bench/bench_propagation.py does) and polls sidecar 1's /authorize until its
decision changes: the delay from the ack. After the load the same probe runs on the idle
cluster. Then: every acknowledged write must be in the change log (GET /changes, every page)
under the revision it was answered with, with its value; every sidecar must reach Redis's
revision; and every user's role and scope on every sidecar must be the last one acknowledged.

    .venv/bin/python bench/bench_writes.py                       # this tree vs d0e48c4, 10 s each
    .venv/bin/python bench/bench_writes.py --rev none --seconds 5 # this tree only

Only loopback addresses are contacted; every loop is bounded in time; every process started
here is ended here (by its own pid / process group).
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_propagation import POLL_TIMEOUT_S, Conn, describe, pct  # noqa: E402
from redis_support import TEST_API_KEY, RedisServer, SidecarProcess, sidecar_env, unique  # noqa: E402

ROLES = ("default", "support", "restricted")
SCOPES = ("participant", "moderator", "admin")
USERS_PER_WRITER = 50


class HConn(Conn):
    """A kept-alive connection, with extra headers (onBehalfOf); with --new-connections, a
    connection per request ("Connection: close"), for trees before 2026-12-01, where on a
    kept-alive connection every answer from a Flask route (every write) stalled ~40 ms (the
    answer left in two segments: Nagle's algorithm met the client's delayed ACK)."""

    keep_alive = True

    def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        if self.keep_alive:
            for attempt in range(2):
                try:
                    self.conn.request(method, path, body=data, headers={
                        "apikey": TEST_API_KEY, "Content-Type": "application/json", **(headers or {})})
                    response = self.conn.getresponse()
                    return response.status, json.loads(response.read() or b"null")
                except (http.client.HTTPException, ConnectionError):
                    self.conn.close()
                    self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                    if attempt:
                        raise
        sent = {"apikey": TEST_API_KEY, "Content-Type": "application/json", "Connection": "close", **(headers or {})}
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=data, headers=sent)
            response = conn.getresponse()
            return response.status, json.loads(response.read() or b"null")
        finally:
            conn.close()


class TreeSidecar(SidecarProcess):
    """A sidecar process run from another source tree (its own `sidecar` package)."""

    def __init__(self, tree: Path, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tree = tree

    def launch(self) -> TreeSidecar:
        self._starts += 1
        self._stdout = self.log_dir / f"{self.name}-{self._starts}.out"
        self._stderr = self.log_dir / f"{self.name}-{self._starts}.err"
        env = sidecar_env(self.env_extra)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.environ.get("BENCH_SIDECAR_PATH"), str(self.tree)]))
        with open(self._stdout, "wb") as out, open(self._stderr, "wb") as err:
            self.proc = subprocess.Popen(self.command, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env,
                                         cwd=str(self.tree), start_new_session=True)
        return self


# -- the writers (a client process per sidecar) ---------------------------------------------------
def client_main(spec: dict[str, Any]) -> None:
    """Run in a child process: the writers of one sidecar; prints their records as JSON."""
    port, seconds, writers = spec["port"], spec["seconds"], spec["writers"]
    HConn.keep_alive = bool(spec.get("keep_alive", True))
    start_at = spec["start_at"]
    records: list[list[Any]] = [[] for _ in writers]
    errors: list[str] = []

    def write(index: int, writer: dict[str, Any]) -> None:
        conn = HConn(port)
        guid, owner, users = writer["guid"], writer["owner"], writer["users"]
        roles = dict.fromkeys(users, "default")
        scopes: dict[str, str | None] = dict.fromkeys(users)
        n = 0
        while time.time() < start_at:
            time.sleep(0.001)
        deadline = start_at + seconds
        while time.time() < deadline:
            uid = users[(n // 2) % len(users)]
            if n % 2 == 0:
                role = ROLES[(ROLES.index(roles[uid]) + 1) % len(ROLES)]
                method, path, body, headers = "PUT", f"/users/{uid}", {"role": role}, {}
                what = ["role", uid, role]
            else:
                scope = SCOPES[(SCOPES.index(scopes[uid]) + 1) % len(SCOPES)] if scopes[uid] else "participant"
                method, path, body = "PUT", f"/groups/{guid}/members/{uid}", {"scope": scope}
                headers, what = {"onBehalfOf": owner}, ["scope", uid, scope]
            n += 1
            started = time.perf_counter()
            try:
                status, payload = conn.call(method, path, body, headers)
            except Exception as exc:  # noqa: BLE001 - counted as a failed write
                errors.append(f"{what}: {exc!r}")
                continue
            elapsed = time.perf_counter() - started
            if status == 200:
                records[index].append([elapsed, int(payload["revision"]), *what])
                if what[0] == "role":
                    roles[uid] = what[2]
                else:
                    scopes[uid] = what[2]
            else:
                errors.append(f"{what}: {status} {json.dumps(payload)[:300]}")
        conn.close()

    threads = [threading.Thread(target=write, args=(i, w), daemon=True) for i, w in enumerate(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 60)
    print(json.dumps({"records": records, "errors": errors}))


def core_main(spec: dict[str, Any]) -> None:
    """Run in a child process, from the tree under test (its `sidecar` first on sys.path): one
    Sidecar (sidecar.core, follower started) on its own RedisStore, and this process's writers
    calling Sidecar.write with the real plans, no HTTP. Then, once Redis stopped moving, checks
    its own acknowledged writes against the journal and the state; prints JSON."""
    sys.path.insert(0, spec["tree"])
    from sidecar import groups as grp
    from sidecar import management as m
    from sidecar.core import Sidecar
    from sidecar.errors import ChatAuthzError
    from sidecar.policy import load_policy
    from sidecar.stores.redisstore import RedisStore
    assert Path(m.__file__).resolve().is_relative_to(Path(spec["tree"]).resolve()), m.__file__
    store = RedisStore(spec["url"], spec["prefix"], timeout_s=2.0)
    core = Sidecar(load_policy(Path(spec["tree"]) / "policies"), store)
    core.start()
    seconds, start_at = spec["seconds"], spec["start_at"]
    records: list[list[Any]] = [[] for _ in spec["writers"]]
    errors: list[str] = []

    def write(index: int, writer: dict[str, Any]) -> None:
        guid, owner, users = writer["guid"], writer["owner"], writer["users"]
        roles = dict.fromkeys(users, "default")
        scopes: dict[str, str | None] = dict.fromkeys(users)
        n = 0
        while time.time() < start_at:
            time.sleep(0.001)
        while time.time() < start_at + seconds:
            uid = users[(n // 2) % len(users)]
            if n % 2 == 0:
                role = ROLES[(ROLES.index(roles[uid]) + 1) % len(ROLES)]
                what = ["role", uid, role]
                plan: Any = lambda tx, uid=uid, role=role: m.plan_set_user_role(tx, uid, role)  # noqa: E731
            else:
                scope = SCOPES[(SCOPES.index(scopes[uid]) + 1) % len(SCOPES)] if scopes[uid] else "participant"
                what = ["scope", uid, scope]
                plan = lambda tx, uid=uid, scope=scope: grp.plan_set_member(tx, guid, uid, scope, owner)  # noqa: E731
            n += 1
            started = time.perf_counter()
            try:
                done = core.write(plan, "bench")
            except (ChatAuthzError, Exception) as exc:  # noqa: BLE001 - counted as a failed write
                errors.append(f"{what}: {exc!r}")
                continue
            records[index].append([time.perf_counter() - started, done.revision, *what])
            if what[0] == "role":
                roles[uid] = what[2]
            else:
                scopes[uid] = what[2]

    threads = [threading.Thread(target=write, args=(i, w), daemon=True) for i, w in enumerate(spec["writers"])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 60)
    cpu = time.process_time()
    stable, last = time.monotonic(), store.revision()
    while time.monotonic() - stable < 1.0:  # the other processes are done too
        time.sleep(0.1)
        now = store.revision()
        if now != last:
            stable, last = time.monotonic(), now
    core.catch_up()
    log = dict(store.changes_since(0))
    lost = []
    final: dict[tuple[str, str], tuple[int, str]] = {}
    for _, revision, kind, uid, value in (r for rs in records for r in rs):
        wanted = ("put_user", "role") if kind == "role" else ("put_member", "scope")
        if not any(op["op"] == wanted[0] and op["uid"] == uid and op[wanted[1]] == value for op in log.get(revision, [])):
            lost.append(f"{kind} {uid}={value} acknowledged at {revision}, not in the journal there")
        if final.get((kind, uid), (0, ""))[0] < revision:
            final[(kind, uid)] = (revision, value)
    loaded = store.load()
    guid_of = {u: w["guid"] for w in spec["writers"] for u in w["users"]}
    for (kind, uid), (revision, value) in final.items():
        for name, state in (("state", core.state), ("load()", loaded)):
            got = state.users.get(uid, "default") if kind == "role" else state.scope_of(guid_of[uid], uid)
            if got != value:
                lost.append(f"{name}: {kind} of {uid} is {got}, the last acknowledged is {value} ({revision})")
    core.stop()
    print(json.dumps({"records": records, "errors": errors, "lost": lost, "cpu": cpu,
                      "conflicts": getattr(store, "conflicts", None), "replans": getattr(store, "replans", None)}))


def run_core(label: str, tree: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The writers in --sidecars processes, each a Sidecar of `tree` (no HTTP)."""
    base = Path(tempfile.mkdtemp(prefix="bench-writes-core-"))
    server = RedisServer(base)
    try:
        server.start()
        prefix = unique("core") + ":"
        writers = [{"guid": unique(f"g{w}"), "owner": unique(f"o{w}"),
                    "users": [unique(f"w{w}u{k}") for k in range(USERS_PER_WRITER)]} for w in range(args.writers)]
        seed = subprocess.run([sys.executable, "-c", SEED, str(tree), server.url, prefix, json.dumps(writers)],
                              capture_output=True, text=True, cwd=str(tree), timeout=120)
        if seed.returncode != 0:
            raise SystemExit(f"seeding failed: {seed.stderr[-3000:]}")
        start_at = time.time() + 3.0
        children = []
        for n in range(args.sidecars):
            spec = {"tree": str(tree), "url": server.url, "prefix": prefix, "seconds": args.seconds,
                    "start_at": start_at, "writers": [w for i, w in enumerate(writers) if i % args.sidecars == n]}
            children.append(subprocess.Popen([sys.executable, __file__, "--core", json.dumps(spec)], cwd=str(tree),
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                             start_new_session=True))
        while time.time() < start_at:
            time.sleep(0.005)
        redis_before = cpu_of([server.pid])
        while time.time() < start_at + args.seconds:
            time.sleep(0.01)
        redis_cpu = cpu_of([server.pid]) - redis_before
        results = []
        for child in children:
            out, err = child.communicate(timeout=args.seconds + 180)
            if child.returncode != 0:
                raise SystemExit(f"a writer process failed: {err[-3000:]}")
            results.append(json.loads(out.strip().splitlines()[-1]))
        records = [r for res in results for rs in res["records"] for r in rs]
        latencies = [r[0] for r in records]
        conflicts = [res["conflicts"] for res in results if res["conflicts"] is not None]
        return {"label": label, "acked": len(records), "per_s": len(records) / args.seconds,
                "errors": [e for res in results for e in res["errors"]],
                "lost": [x for res in results for x in res["lost"]],
                "latency": describe(latencies) if latencies else "-", "p99": pct(latencies, 99) if latencies else 0.0,
                "cpu": {"writers": sum(res["cpu"] for res in results), "redis": redis_cpu},
                "conflicts": sum(conflicts) if conflicts else None,
                "replans": sum(res["replans"] or 0 for res in results)}
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


SEED = """
import json, sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from sidecar import groups as grp
from sidecar.core import Sidecar
from sidecar.policy import load_policy
from sidecar.stores.redisstore import RedisStore
core = Sidecar(load_policy(Path(sys.argv[1]) / "policies"), RedisStore(sys.argv[2], sys.argv[3], timeout_s=5.0))
for w in json.loads(sys.argv[4]):
    core.write(lambda tx, w=w: grp.plan_set_group(tx, w["guid"], w["owner"], None), "seed")
core.store.close()
"""


# -- the probe ------------------------------------------------------------------------------------
class Probe:
    """Writes on sidecar A, polls sidecar B until its decision changes (as bench_propagation)."""

    def __init__(self, a: Conn, b: Conn) -> None:
        self.a, self.b = a, b
        self.role, self.uid, self.guid = unique("prole"), unique("puser"), unique("pgroup")
        self.member = unique("pmember")
        a.ok("POST", "/roles", {"role": self.role, "name": "Probe"})
        a.ok("PUT", f"/users/{self.uid}", {"role": self.role})
        a.ok("PUT", f"/groups/{self.guid}", {"owner": unique("powner")})
        a.ok("PUT", f"/groups/{self.guid}/members/{self.member}", {"scope": "participant"})
        self.allowed, self.scope, self.i = True, "participant", 0
        self.role_check = {"uid": self.uid, "action": "sendMessage",
                           "context": {"messageType": "text", "receiverType": "user"}}
        self.scope_check = {"uid": self.member, "action": "editGroup", "guid": self.guid}

    def once(self) -> float:
        if self.i % 2 == 0:
            self.allowed = not self.allowed
            path = f"/roles/{self.role}/permissions"
            body: dict[str, Any] = {"permissions": {"sendMessage": "allow" if self.allowed else "deny"}}
            check, expected = self.role_check, self.allowed
        else:
            self.scope = "moderator" if self.scope == "participant" else "participant"
            path, body = f"/groups/{self.guid}/members/{self.member}", {"scope": self.scope}
            check, expected = self.scope_check, self.scope == "moderator"
        self.i += 1
        self.a.ok("PUT", path, body)
        acked = time.perf_counter()
        while True:
            decision = self.b.ok("POST", "/authorize", check)["data"]
            now = time.perf_counter()
            if decision["allowed"] is expected:
                return now - acked
            if now - acked > POLL_TIMEOUT_S:
                raise SystemExit(f"B did not change its decision within {POLL_TIMEOUT_S}s: {decision}")


# -- one tree -------------------------------------------------------------------------------------
def run_tree(label: str, tree: Path, args: argparse.Namespace) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="bench-writes-"))
    server = RedisServer(base)
    sidecars: list[SidecarProcess] = []
    try:
        server.start()
        prefix = unique("bench") + ":"
        env = {"CHATAUTHZ_THREADS": str(args.threads)}
        for n in range(args.sidecars):
            sidecars.append(TreeSidecar(tree, base, server.url, name=f"s{n}", prefix=prefix, sync_interval_s=1.0,
                                        redis_timeout_s=1.0, extra_env=env))
        for sidecar in sidecars:
            sidecar.launch()
        for sidecar in sidecars:
            sidecar.wait_live()
        setup = HConn(sidecars[0].port)
        writers = []
        for w in range(args.writers):
            guid, owner = unique(f"g{w}"), unique(f"o{w}")
            setup.ok("PUT", f"/groups/{guid}", {"owner": owner})
            writers.append({"guid": guid, "owner": owner, "users": [unique(f"w{w}u{k}") for k in range(USERS_PER_WRITER)]})
        probe = Probe(HConn(sidecars[0].port), Conn(sidecars[1 % len(sidecars)].port))
        for _ in range(20):
            probe.once()  # warm up (Casbin gates, connections)
        start_at = time.time() + 2.0  # every client process is up by then
        children = []
        for n, sidecar in enumerate(sidecars):
            spec = {"port": sidecar.port, "seconds": args.seconds, "start_at": start_at, "keep_alive": not args.new_connections,
                    "writers": [w for i, w in enumerate(writers) if i % len(sidecars) == n]}
            children.append(subprocess.Popen([sys.executable, __file__, "--client", json.dumps(spec)],
                                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                              cwd=str(ROOT), start_new_session=True))
        while time.time() < start_at:
            time.sleep(0.005)
        cpu_before = {"sidecars": cpu_of(p for sc in sidecars for p in sc.pids()), "redis": cpu_of([server.pid]),
                      "clients": children_cpu()}
        while time.time() < start_at + 0.5:
            time.sleep(0.01)
        loaded_delays: list[float] = []
        while time.time() < start_at + args.seconds - 0.5:
            loaded_delays.append(probe.once())
            time.sleep(0.02)
        while time.time() < start_at + args.seconds:
            time.sleep(0.005)
        cpu = {"sidecars": cpu_of(p for sc in sidecars for p in sc.pids()) - cpu_before["sidecars"],
               "redis": cpu_of([server.pid]) - cpu_before["redis"]}
        records: list[list[Any]] = []
        errors: list[str] = []
        for child in children:
            out, err = child.communicate(timeout=args.seconds + 120)
            if child.returncode != 0:
                raise SystemExit(f"a client process failed: {err[-3000:]}")
            result = json.loads(out.strip().splitlines()[-1])
            records += [r for rs in result["records"] for r in rs]
            errors += result["errors"]
        cpu["clients"] = children_cpu() - cpu_before["clients"]  # (the probe's share is in this process)
        idle_delays = [probe.once() for _ in range(args.propagation)]
        lost, checked = verify(sidecars, setup, records)
        latencies = [r[0] for r in records]
        return {"label": label, "acked": len(records), "per_s": len(records) / args.seconds, "errors": errors,
                "latency": describe(latencies) if latencies else "-", "p99": pct(latencies, 99) if latencies else 0.0,
                "loaded": describe(loaded_delays), "idle": describe(idle_delays), "lost": lost, "checked": checked,
                "idle_p99": pct(idle_delays, 99), "loaded_p99": pct(loaded_delays, 99), "cpu": cpu}
    finally:
        for sidecar in sidecars:
            sidecar.stop()
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def cpu_of(pids: Any) -> float:
    """CPU seconds (user + system) the processes used so far (Linux /proc)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def verify(sidecars: list[SidecarProcess], conn: Conn, records: list[list[Any]]) -> tuple[list[str], int]:
    """Every acknowledged write in the change log at its revision; every sidecar at Redis's
    revision with every user's last acknowledged role and scope."""
    log: dict[int, list[dict[str, Any]]] = {}
    since = 0
    while True:
        body = conn.ok("GET", f"/changes?since={since}&perPage=1000")
        entries = body["data"]
        for entry in entries:
            log[entry["revision"]] = entry["ops"]
        if not entries:
            break
        since = entries[-1]["revision"]
    lost: list[str] = []
    last: dict[tuple[str, str], tuple[int, str]] = {}
    for _, revision, kind, uid, value in records:
        ops = log.get(revision, [])
        wanted = ("put_user", "role") if kind == "role" else ("put_member", "scope")
        if not any(op["op"] == wanted[0] and op["uid"] == uid and op[wanted[1]] == value for op in ops):
            lost.append(f"{kind} {uid}={value} acknowledged at revision {revision}, not in the log there: {ops}")
        if last.get((kind, uid), (0, ""))[0] < revision:
            last[(kind, uid)] = (revision, value)
    head = max(log, default=0)
    deadline = time.monotonic() + 30
    for sidecar in sidecars:
        while sidecar.ready()[1]["revision"] < head:
            if time.monotonic() > deadline:
                lost.append(f"{sidecar.name} did not reach revision {head}")
                break
            time.sleep(0.05)
    checked = 0
    for sidecar in sidecars:
        c = HConn(sidecar.port)
        for (kind, uid), (revision, value) in last.items():
            if kind == "role":
                got = c.ok("GET", f"/users/{uid}")["data"]["role"]
                checked += 1
                if got != value:
                    lost.append(f"{sidecar.name}: {uid} has role {got}, the last acknowledged is {value} ({revision})")
        c.close()
    scopes = {uid: value for (kind, uid), (_, value) in last.items() if kind == "scope"}
    for sidecar in sidecars:
        c = HConn(sidecar.port)
        found: dict[str, str] = {}
        guids = {op["guid"] for ops in log.values() for op in ops if op["op"] == "put_member" and op["uid"] in scopes}
        for guid in guids:
            page = 1
            while True:
                body = c.ok("GET", f"/groups/{guid}/members?perPage=100&page={page}")
                found.update({m["uid"]: m["scope"] for m in body["data"]})
                if page >= body["meta"]["pagination"]["total_pages"]:
                    break
                page += 1
        for uid, value in scopes.items():
            checked += 1
            if found.get(uid) != value:
                lost.append(f"{sidecar.name}: {uid} has scope {found.get(uid)}, the last acknowledged is {value}")
        c.close()
    return lost, checked


def export_tree(rev: str) -> Path:
    tree = Path(tempfile.mkdtemp(prefix=f"bench-writes-{rev}-"))
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--client":
        client_main(json.loads(sys.argv[2]))
        return 0
    if len(sys.argv) == 3 and sys.argv[1] == "--core":
        core_main(json.loads(sys.argv[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of writing per tree (default 10)")
    parser.add_argument("--writers", type=int, default=24)
    parser.add_argument("--new-connections", action="store_true",
                        help="a new connection per write (default: one kept-alive connection per writer)")
    parser.add_argument("--sidecars", type=int, default=3)
    parser.add_argument("--threads", type=int, default=8, help="CHATAUTHZ_THREADS of each sidecar (default 8)")
    parser.add_argument("--propagation", type=int, default=300, help="probe writes on the idle cluster (default 300)")
    parser.add_argument("--rev", default="d0e48c4", help="the other tree to compare with ('none': this tree only)")
    parser.add_argument("--via", choices=("http", "core", "both"), default="both",
                        help="http: through sidecar processes; core: Sidecar.write in --sidecars processes, no "
                             "HTTP (what the store and the write path cost alone); default both")
    args = parser.parse_args()
    trees: list[tuple[str, Path]] = [("this tree", ROOT)]
    exported: Path | None = None
    if args.rev != "none":
        exported = export_tree(args.rev)
        trees.append((args.rev, exported))
    print(f"{os.cpu_count()} CPUs; python {sys.version.split()[0]}; {args.sidecars} sidecars x {args.threads} "
          f"threads on one Redis; {args.writers} writers for {args.seconds:g} s per tree")
    results: list[dict[str, Any]] = []
    try:
        for label, tree in trees:
            if args.via in ("core", "both"):
                result = run_core(label, tree, args)
                result["label"] = f"{label}, Sidecar.write (no HTTP)"
                results.append(result)
                cpu, acked = result["cpu"], max(1, result["acked"])
                print(f"\n== {result['label']} ==")
                print(f"  acknowledged writes: {result['acked']} = {result['per_s']:.0f}/s; failed: {len(result['errors'])}"
                      + (f" (first: {result['errors'][0]})" if result["errors"] else ""))
                print(f"  write latency:               {result['latency']}")
                if result["conflicts"] is not None:
                    print(f"  conflicts (EXEC refused, or a write call without an answer): {result['conflicts']}, "
                          f"plans run again: {result['replans']}")
                print(f"  CPU per acknowledged write: writer processes {cpu['writers'] / acked * 1000:.2f} ms, Redis "
                      f"{cpu['redis'] / acked * 1000:.2f} ms")
                print(f"  lost: {len(result['lost'])} (every ack against the journal; every last value in each "
                      "process's state and in a fresh load())" + (f": {result['lost'][:3]}" if result["lost"] else ""))
            if args.via == "core":
                continue
            result = run_tree(label, tree, args)
            result["label"] = f"{label}, HTTP"
            results.append(result)
            print(f"\n== {result['label']} ==")
            print(f"  acknowledged writes: {result['acked']} = {result['per_s']:.0f}/s; failed: {len(result['errors'])}"
                  + (f" (first: {result['errors'][0]})" if result["errors"] else ""))
            print(f"  write latency:               {result['latency']}")
            print(f"  ack -> changed decision on another sidecar, under that load: {result['loaded']}")
            print(f"  ack -> changed decision on another sidecar, idle:            {result['idle']}")
            cpu, acked = result["cpu"], max(1, result["acked"])
            print(f"  CPU per acknowledged write: sidecars {cpu['sidecars'] / acked * 1000:.2f} ms, Redis "
                  f"{cpu['redis'] / acked * 1000:.2f} ms, writers' clients {cpu['clients'] / acked * 1000:.2f} ms; "
                  f"CPU used in the run, of {os.cpu_count()} CPUs x {args.seconds:g} s: "
                  f"{sum(cpu.values()):.1f} s")
            print(f"  lost: {len(result['lost'])} (checked every ack against the change log, and "
                  f"{result['checked']} last values on every sidecar)" + (f": {result['lost'][:3]}" if result["lost"] else ""))
    finally:
        if exported is not None:
            shutil.rmtree(exported, ignore_errors=True)
    print("\nsummary:")
    for r in results:
        line = f"  {r['label']}: {r['per_s']:.0f} acked writes/s, p99 {r['p99'] * 1000:.1f} ms, {len(r['errors'])} failed, " \
               f"{len(r['lost'])} lost"
        if "idle_p99" in r:
            line += f", propagation p99 {r['loaded_p99'] * 1000:.1f} ms loaded / {r['idle_p99'] * 1000:.1f} ms idle"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
