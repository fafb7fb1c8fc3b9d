#!/usr/bin/env python3
"""`chatauthz import` throughput (issue 12, item 3; target >= 200,000 records/s into Redis and
into SQLite), end to end: a real `python -m sidecar import FILE` process per store, timed from
start to exit, on a generated NDJSON file.

    .venv/bin/python bench/bench_import.py                 # 1,000,000 records
    .venv/bin/python bench/bench_import.py --records 300000 --store sqlite
    git worktree add --detach /tmp/before 827b939          # side by side with another tree,
    .venv/bin/python bench/bench_import.py --compare /tmp/before --repeat 3   # on the same file

The file, in the proportions of 1M users, 100k groups and 5M memberships (plus 1% bans): users
with roles, groups with owners, then memberships of those users (about 5 groups each, listed
group after group: every batch touches thousands of groups, the worst case for grouping writes
per key) and bans; every record new (nothing is "already so"). Redis is a real redis-server on a
free loopback port (tests/redis_support.py).

Prints per store: records/s end to end (wall clock, process start to exit), the importer's CPU
time (user + sys) and the records/s that gives, redis-server's CPU time, the importer's peak RSS
(ru_maxrss from wait4), the load average (the machine may be shared: wall clock then includes
waiting for a core), and the import's own summary line. With --compare DIR the same file is
also imported by the tree at DIR (its `sidecar` package, run with this interpreter), the two
trees taking turns, --repeat times each; then the range (min-max) of each figure per tree.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent


def generate(path: Path, records: int) -> None:
    unit = records / 6_200_000  # 1M users, 100k groups, 5M memberships, 100k bans
    users, groups, bans = max(1, round(1_000_000 * unit)), max(1, round(100_000 * unit)), round(100_000 * unit)
    members = records - users - groups - bans
    with path.open("w", encoding="utf-8") as out:
        for i in range(users):
            out.write(json.dumps({"user": f"u{i}", "role": "support" if i % 2 else "restricted"}) + "\n")
        for g in range(groups):
            out.write(json.dumps({"group": f"g{g}", "owner": f"u{g % users}"}) + "\n")
        for i in range(members):  # the j-th member of group g: distinct within g while j < users
            g, j = i % groups, i // groups
            uid = (g * 9973 + j + 1) % users
            scope = "admin" if uid == g % users else "participant"  # the owner stays admin (already so)
            out.write(json.dumps({"member": f"u{uid}", "group": f"g{g}", "scope": scope}) + "\n")
        for i in range(bans):
            out.write(json.dumps({"ban": f"b{i}", "group": f"g{i % groups}"}) + "\n")


class Run(NamedTuple):
    seconds: float
    cpu_s: float
    peak_rss_mb: float
    summary: str


def run_import(path: Path, *store: str, tree: Path = ROOT) -> Run:
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "sidecar", "import", str(path), *store], cwd=tree,
                                stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:  # said, and left out of the figures (the other runs go on)
            return Run(seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024,
                       f"FAILED (exit {proc.returncode}): {err.read().decode()[-2000:].strip()}")
        return Run(seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, out.read().decode().strip())


def cpu_of(pid: int) -> float:
    """User + sys seconds of a running process (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def report(name: str, records: int, run: Run, extra: str = "") -> None:
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"  {name}: {records / run.seconds:10,.0f} records/s end to end ({run.seconds:.1f} s)  target 200,000\n"
          f"          importer CPU {run.cpu_s:.1f} s ({records / run.cpu_s:,.0f} records per CPU second, "
          f"{run.cpu_s / records * 1e6:.1f} us a record){extra}, peak RSS {run.peak_rss_mb:,.0f} MB; "
          f"load average {load} on {os.cpu_count()} cores\n"
          f"          {run.summary}", flush=True)


def import_into(store: str, path: Path, tmp: Path, tree: Path, batch: list[str]) -> tuple[Run, str]:
    """One import of the file into a new store of the kind; (its run, what the store reports)."""
    where = Path(tempfile.mkdtemp(dir=tmp))
    if store == "sqlite":
        return run_import(path, "--data-dir", str(where / "data"), *batch, tree=tree), ""
    sys.path.insert(0, str(ROOT))
    from tests.redis_support import RedisServer
    server = RedisServer(where / "redis").start()
    try:
        assert server.proc is not None
        before = cpu_of(server.proc.pid)
        run = run_import(path, "--redis-url", server.url, *batch, tree=tree)
        redis_cpu = cpu_of(server.proc.pid) - before
        memory = server.client().info("memory")["used_memory"] / 1e6
    finally:
        server.stop()
    return run, f", redis-server CPU {redis_cpu:.1f} s, Redis memory {memory:,.0f} MB"


def span(values: list[float], fmt: str) -> str:
    low, high = min(values), max(values)
    return format(low, fmt) if len(values) == 1 else f"{format(low, fmt)}-{format(high, fmt)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--store", choices=["sqlite", "redis", "both"], default="both")
    parser.add_argument("--batch-size", type=int, default=None, help="passed on to chatauthz import")
    parser.add_argument("--compare", type=Path, default=None, help="another tree (a checkout) to import the same file")
    parser.add_argument("--repeat", type=int, default=1, help="imports per store (and per tree)")
    args = parser.parse_args()
    batch = ["--batch-size", str(args.batch_size)] if args.batch_size else []
    trees = [("this tree", ROOT)] + ([(f"{args.compare}", args.compare.resolve())] if args.compare else [])
    stores = ["sqlite", "redis"] if args.store == "both" else [args.store]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "import.ndjson"
        generate(path, args.records)
        print(f"{args.records:,} records ({path.stat().st_size / 1e6:.0f} MB of NDJSON)")
        runs: dict[tuple[str, str], list[Run]] = {}
        failed: dict[tuple[str, str], int] = {}
        for _ in range(args.repeat):
            for store in stores:
                for label, tree in trees:
                    run, extra = import_into(store, path, Path(tmp), tree, batch)
                    if not run.summary.startswith("FAILED"):
                        runs.setdefault((store, label), []).append(run)
                    failed[store, label] = failed.get((store, label), 0) + run.summary.startswith("FAILED")
                    report(f"{'SQLite' if store == 'sqlite' else 'Redis '} ({label})", args.records, run, extra)
        if args.repeat > 1 or len(trees) > 1:
            print("ranges over the runs (min-max):")
            for (store, label), done in runs.items():
                print(f"  {store:6} {label}: {span([args.records / r.seconds for r in done], ',.0f')} records/s, "
                      f"{span([r.cpu_s / args.records * 1e6 for r in done], '.1f')} us CPU a record, "
                      f"peak RSS {span([r.peak_rss_mb for r in done], ',.0f')} MB ({len(done)} runs"
                      f"{f', {failed[store, label]} failed' if failed.get((store, label)) else ''})")


if __name__ == "__main__":
    main()
