"""Soak: a bounded run of mixed checks and writes at a steady rate against `chatauthz serve
--workers N`. Prints, per minute: requests, errors (must be 0), latency p50/p99, and the RSS of
the server (master + workers; must stay flat). Exit 1 if any request failed.

    .venv/bin/python bench/soak.py --minutes 3 --checks-per-s 400 --writes-per-s 10
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

KEY = "soak-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def group_rss_mb(pgid: int) -> float:
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.getpgid(int(pid)) == pgid:
                with open(f"/proc/{pid}/status") as status:
                    total += next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))
        except (OSError, StopIteration):
            pass
    return total / 1024


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.requests = 0
        self.errors: list[str] = []

    def record(self, seconds: float, error: str | None) -> None:
        with self.lock:
            self.requests += 1
            self.latencies.append(seconds)
            if error:
                self.errors.append(error)

    def take(self) -> tuple[int, list[str], list[float]]:
        with self.lock:
            out = (self.requests, self.errors, sorted(self.latencies))
            self.requests, self.errors, self.latencies = 0, [], []
            return out


def paced(rate: float, stop: threading.Event, action, stats: Stats, expect_200: bool) -> None:  # type: ignore[no-untyped-def]
    """Call action at a steady rate; an error is a 5xx, a failed connection, or (checks) not 200."""
    session = requests.Session()
    session.headers.update({"apikey": KEY})
    interval = 1.0 / rate
    next_at = time.monotonic()
    while not stop.is_set():
        started = time.monotonic()
        try:
            response = action(session)
            bad = response.status_code >= 500 or (expect_200 and response.status_code != 200)
            error = f"{response.status_code} {response.text[:200]}" if bad else None
        except Exception as exc:  # a failure to connect is an error too
            error = f"{type(exc).__name__}: {exc}"
        stats.record(time.monotonic() - started, error)
        next_at += interval
        time.sleep(max(0.0, next_at - time.monotonic()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--checks-per-s", type=float, default=400.0)
    parser.add_argument("--writes-per-s", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=4, help="threads sending checks")
    parser.add_argument("--server", choices=("granian", "gunicorn"), default="granian")
    args = parser.parse_args()

    root = Path(__file__).resolve().parent.parent
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    data = tempfile.mkdtemp(prefix="chatauthz-soak-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATAUTHZ_")}
    env["CHATAUTHZ_API_KEY"] = KEY
    log_path = Path(data) / "server.log"  # a file, never an undrained pipe
    with open(log_path, "wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "sidecar", "serve", "--port", str(port), "--data-dir", data,
                                   "--workers", str(args.workers), "--server", args.server], cwd=root, env=env,
                                  start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if requests.get(base + "/health/ready", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                print("server did not start:", log_path.read_text()[-2000:])
                return 1
            time.sleep(0.1)
        seed = requests.Session()
        seed.headers.update({"apikey": KEY})
        seed.put(base + "/groups/soak", json={"owner": "owner"}).raise_for_status()
        for i in range(50):
            seed.put(f"{base}/groups/soak/members/m{i}", json={"scope": ("moderator", "participant")[i % 2]})

        def check(session: requests.Session) -> requests.Response:
            i = random.randrange(50)
            body = random.choice([
                {"uid": f"m{i}", "action": "sendMessage", "guid": "soak", "context": {"messageType": "text"}},
                {"uid": f"m{i}", "action": "kickMembers", "guid": "soak", "target": f"m{(i + 1) % 50}"},
                {"uid": f"u{i}", "action": "createGroup"}])
            return session.post(base + "/authorize", json=body, timeout=5)

        def write(session: requests.Session) -> requests.Response:
            i = random.randrange(50)
            if random.random() < 0.5:
                return session.put(f"{base}/groups/soak/members/m{i}",
                                   json={"scope": random.choice(["moderator", "participant"])}, timeout=5)
            return session.put(f"{base}/users/u{i}", json={"role": random.choice(["default", "support"])}, timeout=5)

        stop = threading.Event()
        check_stats, write_stats = Stats(), Stats()
        threads = [threading.Thread(target=paced, args=(args.checks_per_s / args.clients, stop, check, check_stats, True))
                   for _ in range(args.clients)]
        threads.append(threading.Thread(target=paced, args=(args.writes_per_s, stop, write, write_stats, False)))
        for thread in threads:
            thread.start()
        print(f"soak: {args.minutes} min, {args.checks_per_s:.0f} checks/s + {args.writes_per_s:.0f} writes/s, "
              f"{args.workers} workers on 127.0.0.1:{port} (load generator on the same machine)")
        print(f"{'minute':>6} {'checks':>7} {'writes':>7} {'errors':>6} {'p50 ms':>7} {'p99 ms':>7} {'RSS MB':>7}")
        total_errors: list[str] = []
        minutes = max(1, round(args.minutes))
        for minute in range(1, minutes + 1):
            stop.wait(args.minutes * 60 / minutes)
            checks, check_errors, latencies = check_stats.take()
            writes, write_errors, _ = write_stats.take()
            errors = [f"check: {e}" for e in check_errors] + [f"write: {e}" for e in write_errors]
            total_errors += errors
            p50 = latencies[len(latencies) // 2] * 1000 if latencies else float("nan")
            p99 = latencies[int(len(latencies) * 0.99)] * 1000 if latencies else float("nan")
            print(f"{minute:>6} {checks:>7} {writes:>7} {len(errors):>6} {p50:>7.2f} {p99:>7.2f} "
                  f"{group_rss_mb(server.pid):>7.1f}", flush=True)
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
        print(f"errors: {len(total_errors)}")
        for error in total_errors[:10]:
            print("  " + error)
        return 1 if total_errors else 0
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(server.pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
