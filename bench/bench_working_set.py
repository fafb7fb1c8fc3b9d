"""The working set at size: N users and N x L memberships in a real redis-server, sidecars with a
bounded cache (--cache-entries), a Zipf-distributed check workload. Prints what it measured.

    .venv/bin/python bench/bench_working_set.py                       # 10M users, 50M memberships
    .venv/bin/python bench/bench_working_set.py --users 200000 --quick

World: user i holds role `support` (1 in 10) or `default`; it is a member of L groups, one per
layer j: group `g<j>-<block>` of `--group-size` members, placed by a permutation of the users
per layer, the first of each block its owner (admin), the next two moderators. Generated inside
Redis (Lua, chunk by chunk) in the store's own layout, with its index sets, and checked by
sampling against RedisStore's layout helpers: what `chatauthz import` writes, at Redis's speed
(the journal holds one seed revision).

Workload: a user drawn from Zipf(s) over the N users (hot users spread over the id space); 70%
sendMessage in one of their groups, 20% createGroup (app-wide), 10% kickMembers of another
member of that group. Measured:
  1. in process (one Sidecar on the RedisStore, as a worker runs it): start-up (policy part
     only), then per decision time split into hits (no fact read) and misses, and the hit rate
     (decisions that read nothing), after a warm-up;
  2. as processes: `--sidecars` `chatauthz serve --cache-entries` processes, start to ready,
     the same workload over HTTP (keep-alive), each worker's RSS after it.
`--compare-users N` also starts a whole-state sidecar on a world of N users (same shape) and
reports its start to ready and RSS: the whole state does not fit at the full size.
"""
from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import random
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from redis_support import TEST_API_KEY, RedisServer, SidecarProcess  # noqa: E402

from sidecar.core import Sidecar, facts_for  # noqa: E402
from sidecar.engine import AuthzRequest  # noqa: E402
from sidecar.policy import load_policy  # noqa: E402
from sidecar.stores.redisstore import BUCKET_DIGITS, RedisStore  # noqa: E402

MULTIPLIERS = (7919, 104729, 1299709, 15485863, 32452843, 49979687, 67867967, 86028121)
TEXT = {"messageType": "text", "receiverType": "group"}


class World:
    def __init__(self, users: int, layers: int, group_size: int) -> None:
        self.users, self.layers, self.size = users, layers, group_size
        self.mult = [m for m in MULTIPLIERS if math.gcd(m, users) == 1][:layers]
        if len(self.mult) < layers:
            raise SystemExit("choose a user count coprime with more of MULTIPLIERS")
        self.inverse = [pow(m, -1, users) for m in self.mult]
        self.offset = [(j * 7_777_777 + 13) % users for j in range(layers)]

    def position(self, layer: int, uid: int) -> int:
        return (uid * self.mult[layer] + self.offset[layer]) % self.users

    def uid_at(self, layer: int, position: int) -> int:
        return ((position - self.offset[layer]) * self.inverse[layer]) % self.users

    def group_of(self, layer: int, uid: int) -> str:
        return f"g{layer}-{self.position(layer, uid) // self.size}"

    def blocks(self, layer: int) -> Iterator[tuple[str, list[tuple[str, str]]]]:
        """(guid, [(uid, scope)...]) for every group of the layer; the first member owns it."""
        for block in range(self.users // self.size):
            members = []
            for k in range(self.size):
                uid = self.uid_at(layer, block * self.size + k)
                members.append((f"u{uid}", "admin" if k == 0 else "moderator" if k < 3 else "participant"))
            yield f"g{layer}-{block}", members


# Server-side seeding: one EVAL per chunk of users/groups, the same layout as the store spells it
# (checked by sampling afterwards against RedisStore's helpers: see check_seed).
SEED_USERS = """
local first, last, users, layers, size = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local ks, digits = ARGV[6], tonumber(ARGV[7])
for uid = first, last do
  local name = 'u' .. uid
  local role = (uid % 10 == 0) and 'support' or 'default'
  redis.call('HSET', ks .. 'users:' .. string.sub(redis.sha1hex(name), 1, digits), name, role)
  redis.call('SADD', ks .. 'roleusers:' .. role, name)
  for j = 0, layers - 1 do
    local pos = (uid * tonumber(ARGV[8 + j]) + tonumber(ARGV[8 + layers + j])) % users
    redis.call('SADD', ks .. 'usergroups:' .. name, 'g' .. j .. '-' .. math.floor(pos / size))
  end
end
return last - first + 1
"""
SEED_GROUPS = """
local layer, first, last, users, size = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local ks, digits, inverse, offset = ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
for block = first, last do
  local guid = 'g' .. layer .. '-' .. block
  local args = {}
  local owner
  for k = 0, size - 1 do
    local uid = ((block * size + k - offset) * inverse) % users
    local name = 'u' .. uid
    if k == 0 then owner = name end
    args[#args + 1] = name
    args[#args + 1] = (k == 0) and 'admin' or ((k < 3) and 'moderator' or 'participant')
  end
  redis.call('HSET', ks .. 'members:' .. guid, unpack(args))
  redis.call('HSET', ks .. 'owners:' .. string.sub(redis.sha1hex(guid), 1, digits), guid, owner)
  redis.call('SADD', ks .. 'owned:' .. owner, guid)
end
return last - first + 1
"""


def seed(url: str, prefix: str, world: World) -> float:
    """The world, generated inside Redis in the store's layout; returns seconds taken."""
    started = time.perf_counter()
    store = RedisStore(url, prefix, timeout_s=300.0)
    store.write(lambda: [{"op": "put_user", "uid": "seed-marker", "role": "default"}], "bench seed")
    client = store.client
    keyspace = store.key("")
    users_script, groups_script = client.register_script(SEED_USERS), client.register_script(SEED_GROUPS)
    chunk = 20_000
    for first in range(0, world.users, chunk):
        users_script(keys=[store.key("rev")], args=[first, min(world.users, first + chunk) - 1, world.users,
                                                     world.layers, world.size, keyspace, BUCKET_DIGITS,
                                                     *world.mult, *world.offset])
    blocks = world.users // world.size
    for layer in range(world.layers):
        for first in range(0, blocks, chunk // world.size):
            groups_script(keys=[store.key("rev")], args=[layer, first, min(blocks, first + chunk // world.size) - 1,
                                                          world.users, world.size, keyspace, BUCKET_DIGITS,
                                                          world.inverse[layer], world.offset[layer]])
    check_seed(store, world)
    store.close()
    return time.perf_counter() - started


def check_seed(store: RedisStore, world: World, samples: int = 2000) -> None:
    """The seeded layout is the store's: sampled users and groups read back through its helpers."""
    rng = random.Random(3)
    for _ in range(samples):
        uid = rng.randrange(world.users)
        role = "support" if uid % 10 == 0 else "default"
        assert store.client.hget(*store.user_field(f"u{uid}")) == role, uid
        groups = {world.group_of(j, uid) for j in range(world.layers)}
        assert store.groups_of(f"u{uid}") >= groups, uid
        guid = world.group_of(rng.randrange(world.layers), uid)
        members = store.members_of(guid)
        assert f"u{uid}" in members and len(members) == world.size, guid
        owner = next(u for u, scope in members.items() if scope == "admin")
        assert store.client.hget(*store.owner_field(guid)) == owner, guid


class Zipf:
    """Ranks 1..n with P(k) ~ k^-s (continuous inverse CDF), spread over the id space."""

    def __init__(self, n: int, s: float, rng: random.Random) -> None:
        self.n, self.s, self.rng = n, s, rng
        self.top = n ** (1 - s) - 1

    def draw(self) -> int:
        rank = int((1 + self.rng.random() * self.top) ** (1 / (1 - self.s)))
        return (min(rank, self.n) * 2654435761) % self.n


def requests_for(world: World, zipf: Zipf, rng: random.Random, count: int) -> list[AuthzRequest]:
    found = []
    for _ in range(count):
        uid = zipf.draw()
        roll = rng.random()
        if roll < 0.2:
            found.append(AuthzRequest(f"u{uid}", "createGroup"))
            continue
        layer = rng.randrange(world.layers)
        guid = world.group_of(layer, uid)
        if roll < 0.9:
            found.append(AuthzRequest(f"u{uid}", "sendMessage", guid, None, TEXT))
        else:  # another member of that group
            block = world.position(layer, uid) // world.size
            other = world.uid_at(layer, block * world.size + rng.randrange(world.size))
            found.append(AuthzRequest(f"u{uid}", "kickMembers", guid, f"u{other}"))
    return found


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def descendants(pid: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    if int(stat.read().rsplit(")", 1)[1].split()[1]) == pid:
                        children.append(int(entry))
            except OSError:
                continue
    return children + [g for c in children for g in descendants(c)]


def in_process(url: str, prefix: str, world: World, args: argparse.Namespace,
               cache_entries: int | None) -> dict[str, Any]:
    """One Sidecar on the RedisStore (a working set, or with None the whole state)."""
    policy = load_policy(ROOT / "policies", ROOT / "model.conf")
    rss_at_start = rss_mb(os.getpid())
    started = time.perf_counter()
    sidecar = Sidecar(policy, RedisStore(url, prefix, timeout_s=300.0), cache_entries=cache_entries)
    start_s = time.perf_counter() - started
    rng = random.Random(1)
    zipf = Zipf(world.users, args.zipf, rng)
    for _ in range(args.warm // 10_000):  # fill the cache, in batches (one round trip each)
        sidecar.decide_many([(r, None) for r in requests_for(world, zipf, rng, 10_000)])
    hits: list[float] = []
    misses: list[float] = []
    clock = time.perf_counter_ns
    needed = 0
    read_before = sidecar.facts_read
    for request in requests_for(world, zipf, rng, args.checks):
        read = sidecar.facts_read
        facts = facts_for(request.uid, request.guid, request.target)
        needed += len(facts.users) + len(facts.groups) + len(facts.memberships)
        t0 = clock()
        sidecar.decide(request)
        elapsed = (clock() - t0) / 1000
        (hits if sidecar.facts_read == read else misses).append(elapsed)
    state = sidecar.state
    result = {"start_s": start_s, "hit_p50_us": pct(hits, 0.5), "hit_p99_us": pct(hits, 0.99),
              "miss_p50_us": pct(misses, 0.5), "miss_p99_us": pct(misses, 0.99),
              "hit_rate": len(hits) / max(1, len(hits) + len(misses)),
              "fact_hit_rate": 1 - (sidecar.facts_read - read_before) / max(1, needed),
              "checks": len(hits) + len(misses), "facts_held": getattr(state, "size", None),
              "rss_mb": rss_mb(os.getpid()), "rss_mb_at_start": rss_at_start}
    sidecar.store.close()
    return result


def over_http(url: str, prefix: str, world: World, args: argparse.Namespace, base: Path) -> dict[str, Any]:
    sidecars = [SidecarProcess(base, url, name=f"ws{i}", prefix=prefix, sync_interval_s=1.0, redis_timeout_s=2.0,
                               extra_env={"CHATAUTHZ_CACHE_ENTRIES": str(args.cache_entries)})
                for i in range(args.sidecars)]
    ready: list[float] = []
    try:
        for sidecar in sidecars:
            ready.append(start_to_ready(sidecar))
        rng = random.Random(2)
        zipf = Zipf(world.users, args.zipf, rng)
        for sidecar in sidecars:  # fill each cache as a day of traffic would (batches of 1000)
            conn = http.client.HTTPConnection("127.0.0.1", sidecar.port, timeout=300)
            for _ in range(args.http_warm // 1000):
                batch = json.dumps({"checks": [body_of(r) for r in requests_for(world, zipf, rng, 1000)]})
                conn.request("POST", "/authorize/batch", batch,
                             {"Content-Type": "application/json", "apikey": TEST_API_KEY})
                answer = conn.getresponse()
                answer.read()
                if answer.status != 200:
                    raise SystemExit(f"batch: HTTP {answer.status}")
            conn.close()
        bodies = [json.dumps(body_of(r)).encode() for r in requests_for(world, zipf, rng, args.http_checks)]
        latencies: list[float] = []
        lock = threading.Lock()

        def drive(n: int) -> None:
            target = sidecars[n % len(sidecars)]
            conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=30)
            mine = []
            for body in bodies[n::args.clients]:
                t0 = time.perf_counter()
                conn.request("POST", "/authorize", body, {"Content-Type": "application/json", "apikey": TEST_API_KEY})
                response = conn.getresponse()
                response.read()
                mine.append((time.perf_counter() - t0) * 1e6)
                if response.status != 200:
                    raise SystemExit(f"HTTP {response.status}")
            with lock:
                latencies.extend(mine)
        started = time.perf_counter()
        threads = [threading.Thread(target=drive, args=(n,)) for n in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        workers = {s.name: [round(rss_mb(pid)) for pid in [s.proc.pid, *descendants(s.proc.pid)]]  # type: ignore[union-attr]
                   for s in sidecars}
        return {"ready_s": ready, "http_checks_per_s": len(latencies) / elapsed, "http_p50_us": pct(latencies, 0.5),
                "http_p99_us": pct(latencies, 0.99), "rss_mb_by_process": workers}
    finally:
        for sidecar in sidecars:
            sidecar.stop()


def start_to_ready(sidecar: SidecarProcess, timeout: float = 600.0) -> float:
    started = time.monotonic()
    sidecar.launch()
    deadline = started + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", sidecar.port, timeout=2)
            conn.request("GET", "/health/ready", headers={"apikey": TEST_API_KEY})
            if conn.getresponse().status == 200:
                return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.02)
    raise SystemExit(f"{sidecar.name} not ready within {timeout}s:\n{sidecar.stderr()[-2000:]}")


def body_of(request: AuthzRequest) -> dict[str, Any]:
    body: dict[str, Any] = {"uid": request.uid, "action": request.action}
    if request.guid:
        body["guid"] = request.guid
    if request.target:
        body["target"] = request.target
    if request.context:
        body["context"] = dict(request.context)
    return body


def whole_state(url: str, args: argparse.Namespace, base: Path) -> dict[str, Any]:
    world = World(args.compare_users, args.layers, args.group_size)
    prefix = "whole:"
    seeded = seed(url, prefix, world)
    sidecar = SidecarProcess(base, url, name="whole", prefix=prefix, redis_timeout_s=30.0)
    try:
        ready = start_to_ready(sidecar)
        assert sidecar.proc is not None
        rss = [round(rss_mb(pid)) for pid in [sidecar.proc.pid, *descendants(sidecar.proc.pid)]]
        working = SidecarProcess(base, url, name="ws-small", prefix=prefix, redis_timeout_s=30.0,
                                 extra_env={"CHATAUTHZ_CACHE_ENTRIES": str(args.cache_entries)})
        ws_ready = start_to_ready(working)
        assert working.proc is not None
        ws_rss = [round(rss_mb(pid)) for pid in [working.proc.pid, *descendants(working.proc.pid)]]
        working.stop()
        sidecar.stop()
        same = argparse.Namespace(**{**vars(args), "warm": min(args.warm, 200_000)})
        whole = in_process(url, prefix, world, same, None)  # the same workload on the whole state
        cached = in_process(url, prefix, world, same, args.cache_entries)
        return {"users": args.compare_users, "seed_s": seeded, "whole_ready_s": ready, "whole_rss_mb": rss,
                "working_set_ready_s": ws_ready, "working_set_rss_mb_before_load": ws_rss,
                "whole_in_process": {k: round(v, 2) for k, v in whole.items() if isinstance(v, float)},
                "working_set_in_process": {k: round(v, 2) for k, v in cached.items() if isinstance(v, float)}}
    finally:
        sidecar.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=10_000_000)
    parser.add_argument("--layers", type=int, default=5, help="memberships per user (default 5: 50M for 10M)")
    parser.add_argument("--group-size", type=int, default=25)
    parser.add_argument("--cache-entries", type=int, default=1_000_000)
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--warm", type=int, default=2_000_000, help="checks before measuring (in process)")
    parser.add_argument("--checks", type=int, default=200_000, help="measured checks in process")
    parser.add_argument("--sidecars", type=int, default=3)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--http-checks", type=int, default=60_000)
    parser.add_argument("--http-warm", type=int, default=1_500_000, help="checks per sidecar before measuring")
    parser.add_argument("--compare-users", type=int, default=1_000_000,
                        help="also a whole-state sidecar on a world this big (0: skip)")
    parser.add_argument("--quick", action="store_true", help="small warm-up and counts (a smoke run)")
    parser.add_argument("--in-process-only", action="store_true", help="measure 1. only (no sidecar processes)")
    args = parser.parse_args()
    if args.quick:
        args.warm, args.checks, args.http_checks, args.compare_users, args.http_warm = 50_000, 20_000, 6_000, 0, 10_000
    base = Path(tempfile.mkdtemp(prefix="bench-ws-"))
    server = RedisServer(base)
    server.start()
    try:
        world = World(args.users, args.layers, args.group_size)
        print(f"seeding {args.users:,} users, {args.users * args.layers:,} memberships, "
              f"{args.users // args.group_size * args.layers:,} groups ...", flush=True)
        seeded = seed(server.url, "chatauthz:", world)
        info = server.client().info("memory")
        print(f"seeded in {seeded:.0f}s; Redis holds {info['used_memory'] / 2**20:,.0f} MB", flush=True)
        local = in_process(server.url, "chatauthz:", world, args, args.cache_entries)
        print("in process:", json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in local.items()}),
              flush=True)
        if args.in_process_only:
            return
        remote = over_http(server.url, "chatauthz:", world, args, base)
        print("processes:", json.dumps({k: [round(x, 3) for x in v] if k == "ready_s" else
                                        round(v, 1) if isinstance(v, float) else v for k, v in remote.items()}),
              flush=True)
        if args.compare_users:
            server.client(socket_timeout=600).flushall()
            compared = whole_state(server.url, args, base)
            print("whole state vs working set at", f"{args.compare_users:,} users:", json.dumps(
                {k: round(v, 2) if isinstance(v, float) else v for k, v in compared.items()}), flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
