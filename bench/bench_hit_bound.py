#!/usr/bin/env python3
"""How high can a working set's hit rate go on bench_working_set's workload? (issue 12's target
is >= 95% with 1M entries over 10M users, Zipf(1.1).) No store, no sidecar: arithmetic and a
replay of the same requests through ideal LRU caches.

1. The bound: users are drawn from Zipf(s) by bench_working_set.Zipf (continuous inverse CDF),
   so the share of requests made by the k hottest of n users is (1 - k^(1-s)) / (1 - n^(1-s)).
   A cache that keeps only the hottest k users (whatever it keeps per user) misses every request
   of the others: its hit rate is at most that share, before counting groups or kick targets.
2. Replays at --users (default 1M, with --entries 100k: the same ratio as 10M / 1M), after a
   warm-up of a third of the requests, through an exact LRU of --entries:
     facts     the working set's unit: a user's role, a group's owner, one membership (guid, uid)
     entities  one entry per user (role and all memberships) and per group (its owner)
     actors    entities, counting only the acting user and the group (as if kick targets were free)

    .venv/bin/python bench/bench_hit_bound.py
    .venv/bin/python bench/bench_hit_bound.py --users 200000 --entries 20000 --requests 600000
"""
from __future__ import annotations

import argparse
import random
import sys
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_working_set import World, Zipf, requests_for  # noqa: E402

from sidecar.core import facts_for  # noqa: E402
from sidecar.engine import AuthzRequest  # noqa: E402


def top_share(k: int, n: int, s: float) -> float:
    """The share of requests made by the k hottest of n users under bench_working_set.Zipf(s)."""
    return (1 - k ** (1 - s)) / (1 - n ** (1 - s))


def replay(requests: list[AuthzRequest], entries: int, keys_of: Callable[[AuthzRequest], list[Hashable]]) -> float:
    """The share of requests (after the first third) whose keys were all in an LRU of `entries`."""
    cache: OrderedDict[Hashable, None] = OrderedDict()
    warm, hits = len(requests) // 3, 0
    for index, request in enumerate(requests):
        missed = False
        for key in keys_of(request):
            if key in cache:
                cache.move_to_end(key)
            else:
                missed = True
                cache[key] = None
                if len(cache) > entries:
                    cache.popitem(last=False)
        hits += index >= warm and not missed
    return hits / (len(requests) - warm)


def facts(request: AuthzRequest) -> list[Hashable]:
    wanted = facts_for(request.uid, request.guid, request.target)
    return [*(("u", u) for u in wanted.users), *(("g", g) for g in wanted.groups),
            *(("m", m) for m in wanted.memberships)]


def entities(request: AuthzRequest) -> list[Hashable]:
    wanted = facts_for(request.uid, request.guid, request.target)
    return [*(("u", u) for u in wanted.users), *(("g", g) for g in wanted.groups)]


def actors(request: AuthzRequest) -> list[Hashable]:
    return [("u", request.uid), *([("g", request.guid)] if request.guid else [])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=1_500_000)
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--layers", type=int, default=5, help="memberships per user (bench_working_set's default)")
    parser.add_argument("--group-size", type=int, default=25)
    args = parser.parse_args()
    s = args.zipf
    print(f"Zipf({s}): share of requests made by the hottest k of n users (the most any per-user cache can hit)")
    for k, n in ((1_000_000, 10_000_000), (args.entries, args.users)):
        print(f"  top {k:>10,} of {n:>11,}: {top_share(k, n, s):6.1%}")
    world = World(args.users, args.layers, args.group_size)
    rng = random.Random(1)
    requests = requests_for(world, Zipf(args.users, s, rng), rng, args.requests)
    print(f"\nLRU replays of {args.requests:,} requests (bench_working_set's mix) over {args.users:,} users, "
          f"{args.entries:,} entries")
    for name, keys_of in (("facts", facts), ("entities", entities), ("actors", actors)):
        print(f"  {name:9} hit rate {replay(requests, args.entries, keys_of):6.1%}")


if __name__ == "__main__":
    main()
