#!/usr/bin/env python3
"""`chatauthz import` throughput (issue 12, item 3; target >= 200,000 records/s into Redis and
into SQLite), end to end: a real `python -m sidecar import FILE` process per store, timed from
start to exit, on a generated NDJSON file.

    .venv/bin/python bench/bench_import.py                 # 1,000,000 records
    .venv/bin/python bench/bench_import.py --records 300000 --store sqlite

The file: users with roles (20%), groups with owners (2%), memberships (77%) and bans (1%),
every record new (nothing is "already so"). Redis is a real redis-server on a free loopback
port (tests/redis_support.py). Prints records/s per store, and the import's own summary line.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def generate(path: Path, records: int) -> None:
    users, groups = records // 5, max(1, records // 50)
    members = records - users - groups - records // 100
    with path.open("w", encoding="utf-8") as out:
        for i in range(users):
            out.write(json.dumps({"user": f"u{i}", "role": "support" if i % 2 else "restricted"}) + "\n")
        for g in range(groups):
            out.write(json.dumps({"group": f"g{g}", "owner": f"u{g % users}"}) + "\n")
        for i in range(members):  # member m{i} of group g{i % groups}: all distinct
            out.write(json.dumps({"member": f"m{i}", "group": f"g{i % groups}", "scope": "participant"}) + "\n")
        for i in range(records // 100):
            out.write(json.dumps({"ban": f"b{i}", "group": f"g{i % groups}"}) + "\n")


def run_import(path: Path, *store: str) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "sidecar", "import", str(path), *store], cwd=ROOT,
                          capture_output=True, text=True, timeout=1800, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"import failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds, done.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--store", choices=["sqlite", "redis", "both"], default="both")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "import.ndjson"
        generate(path, args.records)
        print(f"{args.records:,} records ({path.stat().st_size / 1e6:.0f} MB of NDJSON)")
        if args.store in ("sqlite", "both"):
            seconds, summary = run_import(path, "--data-dir", str(Path(tmp) / "data"))
            print(f"  SQLite: {args.records / seconds:10,.0f} records/s end to end ({seconds:.1f} s)  target 200,000\n"
                  f"          {summary}")
        if args.store in ("redis", "both"):
            sys.path.insert(0, str(ROOT))
            from tests.redis_support import RedisServer
            server = RedisServer(Path(tmp) / "redis").start()
            try:
                seconds, summary = run_import(path, "--redis-url", server.url)
            finally:
                server.stop()
            print(f"  Redis:  {args.records / seconds:10,.0f} records/s end to end ({seconds:.1f} s)  target 200,000\n"
                  f"          {summary}")


if __name__ == "__main__":
    main()
