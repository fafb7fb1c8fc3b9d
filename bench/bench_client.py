#!/usr/bin/env python3
"""Client benchmark, side by side in one run.

(a) Sequential calls on one keep-alive connection to real sidecars (`chatauthz serve`, 1 worker,
    one on 127.0.0.1:<free port>, one on a Unix socket, same data folder), interleaved call by call
    so that a noisy machine slows every contender alike: a bare http.client POST /authorize over
    TCP and over the socket (the floor), Client.check over TCP and over the socket, and
    httpx.Client.post over TCP for reference. Prints p50 / p99 and Client's overhead over the
    bare call (target <= 20%), and UDS vs TCP (target: UDS <= TCP).
(b) Embedded.check at 1M users (bench_decisions' 1m preset, written straight into an SQLite data
    folder): p50 / p99 per request kind (targets <= 5 / <= 25 µs), next to what it is made of:
    Engine.decide, Sidecar.decide and wire.parse_check on the same requests.

    .venv/bin/python bench/bench_client.py                     # both, 1M users
    .venv/bin/python bench/bench_client.py --size 100000:10000:100000 --calls 5000
"""
from __future__ import annotations

import argparse
import http.client
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

import bench_decisions as bd  # noqa: E402
import httpx  # noqa: E402
from run import write_store  # noqa: E402

from sidecar.client import Client  # noqa: E402
from sidecar.client.calls import check_body  # noqa: E402
from sidecar.client.embedded import Embedded  # noqa: E402
from sidecar.engine import Engine  # noqa: E402
from sidecar.wire import parse_check  # noqa: E402

TARGET_OVERHEAD, TARGET_P50_US, TARGET_P99_US = 0.20, 5.0, 25.0
BODY = {"uid": "bench-user", "action": "sendMessage", "target": "bench-peer", "context": {"messageType": "text"}}


def percentile(values: list[float], p: float) -> float:
    return bd.percentile(sorted(values), p)


def serve(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "sidecar", "serve", "--workers", "1", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def wait_ready(client: Client, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"a sidecar exited with {proc.returncode}")
        try:
            client.check("probe", "createGroup")
            return
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.1)
    raise SystemExit("a sidecar did not answer within 30 s")


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost")
        self.socket_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.socket_path)


def bench_http(calls: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="chatauthz-bench-client-"))
    key = secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATAUTHZ_")} | {"CHATAUTHZ_API_KEY": key}
    port, sock = bd.free_port(), folder / "s.sock"
    procs = [serve(["--port", str(port), "--data-dir", str(folder / "data")], env)]
    try:
        tcp = Client(f"http://127.0.0.1:{port}", api_key=key, timeout=5.0)
        wait_ready(tcp, procs[0])
        procs.append(serve(["--uds", str(sock), "--data-dir", str(folder / "data")], env))
        uds = Client(f"unix://{sock}", api_key=key, timeout=5.0)
        wait_ready(uds, procs[1])
        body = orjson.dumps(BODY)
        headers = {"apikey": key, "Content-Type": "application/json"}
        bare_tcp, bare_uds = http.client.HTTPConnection("127.0.0.1", port), UnixHTTPConnection(str(sock))
        hx = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers)

        def bare(conn: http.client.HTTPConnection) -> Callable[[], Any]:
            def call() -> Any:
                conn.request("POST", "/authorize", body, headers)
                return orjson.loads(conn.getresponse().read())["data"]["allowed"]
            return call
        contenders: dict[str, Callable[[], Any]] = {
            "http.client TCP (bare)": bare(bare_tcp),
            "Client.check TCP": lambda: tcp.check("bench-user", "sendMessage", target="bench-peer",
                                                  context={"messageType": "text"}).allowed,
            "http.client UDS (bare)": bare(bare_uds),
            "Client.check UDS": lambda: uds.check("bench-user", "sendMessage", target="bench-peer",
                                                  context={"messageType": "text"}).allowed,
            "httpx.Client TCP": lambda: orjson.loads(hx.post("/authorize", content=body).content)["data"]["allowed"],
        }
        for fn in contenders.values():
            for _ in range(300):
                assert fn() is True
        samples: dict[str, list[float]] = {name: [] for name in contenders}
        clock = time.perf_counter_ns
        order = list(contenders.items())
        shuffle = random.Random(3).shuffle
        for _ in range(calls):
            shuffle(order)  # interleaved, in a new order each round: drift and position hit all alike
            for name, fn in order:
                start = clock()
                fn()
                samples[name].append((clock() - start) / 1000)
        print(f"\n(a) sequential POST /authorize on one keep-alive connection, {calls:,} calls each, interleaved")
        print(f"{'contender':<26}{'p50 µs':>10}{'p99 µs':>10}")
        p50 = {}
        for name, values in samples.items():
            p50[name] = percentile(values, 50)
            print(f"{name:<26}{p50[name]:>10.1f}{percentile(values, 99):>10.1f}")
        for transport in ("TCP", "UDS"):
            overhead = p50[f"Client.check {transport}"] / p50[f"http.client {transport} (bare)"] - 1
            verdict = "ok" if overhead <= TARGET_OVERHEAD else "MISSED"
            print(f"Client.check overhead over bare http.client, {transport}: {overhead:+.1%} "
                  f"(target <= {TARGET_OVERHEAD:.0%}: {verdict})")
        httpx_over = p50["httpx.Client TCP"] / p50["http.client TCP (bare)"] - 1
        print(f"httpx.Client overhead over bare http.client, TCP: {httpx_over:+.1%} (why Client is not on it)")
        ratio = p50["Client.check UDS"] / p50["Client.check TCP"]
        print(f"Client.check UDS / TCP p50: {ratio:.2f} (target <= 1: {'ok' if ratio <= 1 else 'MISSED'})")
        for closable in (tcp, uds, hx, bare_tcp, bare_uds):
            closable.close()
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(folder, ignore_errors=True)


def bench_embedded(size: bd.Size, calls: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="chatauthz-bench-embedded-"))
    try:
        (folder / "data").mkdir(mode=0o700)
        write_s = write_store(folder / "data" / "chatauthz.sqlite3", bd.state_ops(size))
        started = time.perf_counter()
        embedded = Embedded(data_dir=folder / "data")
        load_s = time.perf_counter() - started
        print(f"\n(b) Embedded.check at {size.users:,} users, {size.groups:,} groups, "
              f"{size.groups * size.per_group:,} memberships (store written in {write_s:.1f} s, Embedded "
              f"loaded it in {load_s:.1f} s, max RSS {bd.rss_mb():,.0f} MB), {calls:,} calls per kind")
        rng = random.Random(7)
        core, engine = embedded.core, Engine(embedded.core.policy)
        print(f"{'request':<20}{'Embedded.check':>22}{'Sidecar.decide':>22}{'Engine.decide':>22}{'parse_check':>14}")
        print(f"{'':<20}{'p50 / p99 µs':>22}{'p50 / p99 µs':>22}{'p50 / p99 µs':>22}{'p50 µs':>14}")
        met = True
        for kind in bd.KINDS:
            checks = bd.make_checks(size, kind, bd.SAMPLES_PER_KIND, rng)
            args = [(c.request.uid, c.request.action, c.request.guid, c.request.target,
                     dict(c.request.context) or None) for c in checks]
            bodies = [check_body(*a) for a in args]
            bd.verify(lambda c: (lambda d: (d.allowed, d.code))(embedded.check(c.request.uid, c.request.action,
                      c.request.guid, c.request.target, dict(c.request.context) or None)), checks, kind)
            def engine_decide(c: bd.Check, state: Any = core.state) -> Any:
                return engine.decide(c.request, state)
            row = {
                "Embedded.check": bd.time_calls(lambda a: embedded.check(*a), args, calls),
                "Sidecar.decide": bd.time_calls(lambda c: core.decide(c.request), checks, calls),
                "Engine.decide": bd.time_calls(engine_decide, checks, calls),
                "parse_check": bd.time_calls(parse_check, bodies, calls),
            }
            cells = [f"{bd.percentile(row[n], 50):6.1f} / {bd.percentile(row[n], 99):6.1f}" for n in
                     ("Embedded.check", "Sidecar.decide", "Engine.decide")]
            met &= bd.percentile(row["Embedded.check"], 50) <= TARGET_P50_US and \
                bd.percentile(row["Embedded.check"], 99) <= TARGET_P99_US
            print(f"{kind:<20}{cells[0]:>22}{cells[1]:>22}{cells[2]:>22}{bd.percentile(row['parse_check'], 50):>14.1f}")
        print(f"Embedded.check targets p50 <= {TARGET_P50_US:g} µs and p99 <= {TARGET_P99_US:g} µs on every kind: "
              f"{'ok' if met else 'MISSED (see the breakdown: Engine.decide alone is most of it)'}")
        embedded.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=3000, help="sequential HTTP calls per contender")
    parser.add_argument("--iterations", type=int, default=20_000, help="Embedded calls per request kind")
    parser.add_argument("--size", default="1m", help="bench_decisions size for Embedded (1k, 100k, 1m or U:G:M)")
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--skip-embedded", action="store_true")
    args = parser.parse_args()
    print(f"chatauthz client benchmark: Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    if not args.skip_http:
        bench_http(args.calls)
    if not args.skip_embedded:
        bench_embedded(bd.parse_sizes(args.size)[0], args.iterations)


if __name__ == "__main__":
    main()
