#!/usr/bin/env python3
"""Sentinel failover: how long writes are refused after the primary dies.

Starts a primary, its replica and three sentinels (`down-after-milliseconds` as given, default
1000; loopback, no persistence) and one sidecar (`chatauthz serve --redis-sentinel ...
--redis-service ...`) as processes. Each round: a few writes, wait until the replica has them,
`kill -9` the primary, then a write every 50 ms through the sidecar until one answers 200; the
figure is the time from the kill to that answer (it includes the sentinels noticing, agreeing,
promoting, and the sidecar reaching the new primary). The old primary is then restarted as a
replica of the new one and the next round kills the new primary, once 2 x failover-timeout
(default 3000 ms) have passed since the last failover: a sentinel does not try the same
master's failover again sooner, and a round started earlier measures that rule (about 8 s
here), not a failover. Prints every round and the max; exits 1 if a round exceeds the target
(default 10 s).

    .venv/bin/python bench/bench_failover.py --rounds 3

Only loopback addresses are contacted; every loop is bounded in time; every process started
here is ended here (by its own pid / process group).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from redis_support import SentinelSetup, SidecarProcess, unique  # noqa: E402


def one_round(setup: SentinelSetup, sidecar: SidecarProcess) -> tuple[float, float]:
    """(seconds from the kill to a write accepted, when the failover was seen)."""
    for _ in range(5):
        sidecar.ok("PUT", f"/users/{unique('u')}", {"role": "support"})
    setup.wait_in_sync()
    old = setup.primary()
    old.kill()
    died = time.monotonic()
    while True:
        response = sidecar.put(f"/users/{unique('probe')}", json={"role": "support"}, timeout=15)
        if response.status_code == 200:
            elapsed = time.monotonic() - died
            break
        if time.monotonic() - died > 60:
            raise SystemExit("writes were not accepted again within 60 s")
        time.sleep(0.05)
    new = setup.wait_failover(old)
    old.extra_args = ["--replicaof", "127.0.0.1", str(new.port)]
    old.restart(wipe=True)
    failed_over = time.monotonic()
    setup.wait_in_sync(30)
    return elapsed, failed_over


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--down-after-ms", type=int, default=1000)
    parser.add_argument("--failover-timeout-ms", type=int, default=3000)
    parser.add_argument("--target", type=float, default=10.0, help="seconds (default 10)")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-failover-"))
    setup = SentinelSetup(base / "redis", down_after_ms=args.down_after_ms,
                          failover_timeout_ms=args.failover_timeout_ms)
    sidecar = SidecarProcess(base, None, name="fo", prefix=unique("bench") + ":", redis_args=setup.redis_args())
    try:
        setup.start()
        sidecar.start()
        figures: list[float] = []
        last_failover: float | None = None
        for n in range(args.rounds):
            if last_failover is not None:
                time.sleep(max(0.0, 2 * args.failover_timeout_ms / 1000 + 0.5 - (time.monotonic() - last_failover)))
            elapsed, last_failover = one_round(setup, sidecar)
            figures.append(elapsed)
            print(f"round {n + 1}: writes refused -> accepted again {figures[-1]:.2f}s after the primary died",
                  flush=True)
        print(f"Sentinel failover (down-after-milliseconds {args.down_after_ms}): max {max(figures):.2f}s, "
              f"all {[round(f, 2) for f in figures]} (target {args.target}s)")
        return 0 if max(figures) <= args.target else 1
    finally:
        sidecar.stop()
        setup.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
