#!/usr/bin/env python3
"""Availability of POST /authorize under hostile clients holding a valid key (issue 10, item 9).

    .venv/bin/python bench/bench_abuse.py                       # granian and gunicorn, 3 rounds
    .venv/bin/python bench/bench_abuse.py --server granian --rounds 1
    .venv/bin/python bench/bench_abuse.py --source /tmp/old-checkout   # the same, on other code

For each WSGI server, a real `chatauthz serve --workers 2 --threads 4` (embedded store) on
127.0.0.1. A legitimate client paces single checks (--rate per second over --legit-conns
keep-alive connections, 5 s timeout each) for --duration seconds, once without abuse and once
while --slow connections send an /authorize body at 1 byte/s (each reopened when answered or
closed) and --waiters callers send atLeastRevision far ahead of the store (each again when
answered, at most 4 a second). Runs alternate, no abuse then abuse, --rounds times. Prints each
run and the medians: % answered, p50/p99 (ms), p99 ratio abuse/none; what the abusers got.
Target: 100% answered, p99 under abuse within 2x of the run without. Under granian a body that
never completes keeps its blocking thread until the client leaves (granian#728); the thread bank
(sidecar/threadbank.py) keeps threadbank.RESERVE more threads per worker parked for that, so the
target holds at the default --threads up to that many stalled bodies per worker. gunicorn frees
the thread at the deadline but is held until then (sidecar/api/bodies.py), so it does not.
"""
from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-abuse-key-0123456789abcdef"
BODY = b'{"uid": "alice", "action": "sendMessage", "target": "bob"}'
FAR = json.dumps({"uid": "alice", "action": "sendMessage", "atLeastRevision": 10**9}).encode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(args: argparse.Namespace, server: str, data: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATAUTHZ_")}
    env.update(CHATAUTHZ_API_KEY=KEY, CHATAUTHZ_BODY_TIMEOUT_S=str(args.body_timeout))
    if args.source:
        env["PYTHONPATH"] = str(Path(args.source).resolve())
    cmd = [sys.executable, "-m", "sidecar", "serve", "--server", server, "--workers", "2", "--threads",
           str(args.threads), "--port", str(port), "--data-dir", str(data)]
    proc = subprocess.Popen(cmd, env=env, cwd=args.source or ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=(data.parent / f"{server}.log").open("wb"))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if post(port, BODY, 2.0)[0] == 200:
                return proc, port
        except OSError:
            time.sleep(0.1)
    stop_server(proc)
    raise SystemExit(f"{server} did not answer within 30 s; see {data.parent / (server + '.log')}")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=10)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def post(port: int, body: bytes, timeout: float, conn: http.client.HTTPConnection | None = None) -> tuple[int, bytes]:
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("POST", "/authorize", body=body, headers={"apikey": KEY, "Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, response.read()


# -- the legitimate client -----------------------------------------------------------------
def legit(port: int, conns: int, rate: float, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    failures: Counter[str] = Counter()
    lock = threading.Lock()
    interval = conns / rate

    def run(offset: float) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5.0)
        start = time.monotonic() + offset
        planned = int(seconds / interval)
        for i in range(planned):
            if time.monotonic() > start + seconds + 5.0:  # stuck behind timeouts: the rest is unanswered
                with lock:
                    failures["not sent (window over)"] += planned - i
                break
            time.sleep(max(0.0, start + i * interval - time.monotonic()))
            t0 = time.perf_counter()
            try:
                status, _ = post(port, BODY, 5.0, conn)
                outcome = "ok" if status == 200 else f"HTTP {status}"
            except (OSError, http.client.HTTPException) as exc:
                outcome = type(exc).__name__
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5.0)
            took = time.perf_counter() - t0
            with lock:
                if outcome == "ok":
                    latencies.append(took)
                else:
                    failures[outcome] += 1
        conn.close()

    threads = [threading.Thread(target=run, args=(k * interval / conns,)) for k in range(conns)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sent = len(latencies) + sum(failures.values())
    latencies.sort()

    def pick(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else float("nan")
    return {"sent": sent, "answered": 100.0 * len(latencies) / max(sent, 1), "p50": pick(0.50),
            "p99": pick(0.99), "failures": dict(failures)}


# -- the abusers -----------------------------------------------------------------------------
class Abuse:
    """The abusers, in a process of their own: the legitimate client's timings stay its own."""

    def __init__(self, port: int, slow: int, waiters: int) -> None:
        self.port, self.slow, self.waiters = port, slow, waiters
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.slow_answers: Counter[str] = Counter()
        self.slow_held: list[float] = []
        self.wait_answers: Counter[str] = Counter()
        self.wait_took: list[float] = []
        self._proc: multiprocessing.Process | None = None
        self._done: Any = None
        self._results: Any = None

    def __enter__(self) -> Abuse:
        self._done, self._results = multiprocessing.Event(), multiprocessing.Queue()
        self._proc = multiprocessing.Process(target=self._run, daemon=True)
        self._proc.start()
        time.sleep(1.5)  # let them take hold of whatever they can
        return self

    def __exit__(self, *_: Any) -> None:
        assert self._proc is not None
        self._done.set()
        found = self._results.get(timeout=30)
        self._proc.join(timeout=10)
        self.slow_answers, self.slow_held, self.wait_answers, self.wait_took = found

    def _run(self) -> None:
        threads = [threading.Thread(target=self._slow_bodies, daemon=True)]
        threads += [threading.Thread(target=self._waiter, daemon=True) for _ in range(self.waiters)]
        for thread in threads:
            thread.start()
        self._done.wait()
        self.stop.set()
        deadline = time.monotonic() + 3.0  # a waiter stuck in a request is not waited for long
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        with self.lock:
            self._results.put((Counter(self.slow_answers), list(self.slow_held), Counter(self.wait_answers),
                               list(self.wait_took)))

    def _open(self) -> tuple[socket.socket, float, int]:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        sock.setblocking(False)
        head = (f"POST /authorize HTTP/1.1\r\nHost: x\r\napikey: {KEY}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(BODY)}\r\n\r\n").encode()
        sock.sendall(head + BODY[:1])
        return sock, time.monotonic(), 1

    def _slow_bodies(self) -> None:
        conns = [self._open() for _ in range(self.slow)]
        next_byte = time.monotonic() + 1.0
        while not self.stop.is_set():
            readable, _, _ = select.select([c[0] for c in conns], [], [], 0.1)
            for i, (sock, opened, _sent) in enumerate(conns):
                if sock not in readable:
                    continue
                try:
                    data = sock.recv(4096)
                except OSError:
                    data = b""
                with self.lock:
                    self.slow_answers[data[:12].decode(errors="replace") or "closed"] += 1
                    self.slow_held.append(time.monotonic() - opened)
                sock.close()
                conns[i] = self._open()
            if time.monotonic() >= next_byte:  # one more body byte per connection each second
                next_byte += 1.0
                for i, (sock, opened, sent) in enumerate(conns):
                    if sent < len(BODY) - 1:  # never the last byte: the body stays incomplete
                        try:
                            sock.send(BODY[sent:sent + 1])
                            conns[i] = (sock, opened, sent + 1)
                        except OSError:
                            pass
        for sock, _, _ in conns:
            sock.close()

    def _waiter(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10.0)  # keep-alive
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                status, body = post(self.port, FAR, 10.0, conn)
                code = json.loads(body).get("error", {}).get("code", "") if status != 200 else ""
                outcome = f"{status} {code}".strip()
            except (OSError, http.client.HTTPException, ValueError) as exc:
                outcome = type(exc).__name__
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10.0)
            with self.lock:
                self.wait_answers[outcome] += 1
                self.wait_took.append(time.monotonic() - t0)
            self.stop.wait(max(0.0, 0.25 - (time.monotonic() - t0)))


# -- the runs --------------------------------------------------------------------------------
def line(label: str, r: dict[str, Any]) -> str:
    extra = f"  failures {r['failures']}" if r["failures"] else ""
    return (f"  {label:<9} sent {r['sent']:>5}  answered {r['answered']:6.2f}%  p50 {r['p50']:7.2f} ms  "
            f"p99 {r['p99']:8.2f} ms{extra}")


def bench(args: argparse.Namespace, server: str) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="chatauthz-abuse-"))
    proc, port = start_server(args, server, tmp / "data")
    print(f"\n== {server}: 2 workers x {args.threads} threads, body timeout {args.body_timeout:g}s; legit "
          f"{args.rate:g} req/s over {args.legit_conns} connections for {args.duration:g}s; abuse: "
          f"{args.slow} slow bodies (1 byte/s) + {args.waiters} far-ahead waiters", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {"none": [], "abuse": []}
    try:
        legit(port, args.legit_conns, args.rate, 1.0)  # warm-up
        for round_no in range(1, args.rounds + 1):
            quiet = legit(port, args.legit_conns, args.rate, args.duration)
            print(line(f"r{round_no} none", quiet), flush=True)
            with Abuse(port, args.slow, args.waiters) as abuse:
                hostile = legit(port, args.legit_conns, args.rate, args.duration)
            print(line(f"r{round_no} abuse", hostile), flush=True)
            held = sorted(abuse.slow_held)
            print(f"            slow bodies answered: {dict(abuse.slow_answers) or 'none'}"
                  + (f", held median {statistics.median(held):.2f} s" if held else ""), flush=True)
            took = sorted(abuse.wait_took)
            print(f"            far-ahead waiters: {dict(abuse.wait_answers)}"
                  + (f", p50 {statistics.median(took) * 1000:.1f} ms" if took else ""), flush=True)
            runs["none"].append(quiet)
            runs["abuse"].append(hostile)
    finally:
        stop_server(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    med = {f"{kind} {k}": statistics.median(r[k] for r in rs) for kind, rs in runs.items() for k in ("answered", "p50", "p99")}
    ratio = med["abuse p99"] / med["none p99"] if med["none p99"] == med["none p99"] else float("nan")
    ok = med["abuse answered"] == 100.0 and ratio <= 2.0
    print(f"  median of {args.rounds}: none {med['none answered']:.2f}% p50 {med['none p50']:.2f} / p99 "
          f"{med['none p99']:.2f} ms; abuse {med['abuse answered']:.2f}% p50 {med['abuse p50']:.2f} / p99 "
          f"{med['abuse p99']:.2f} ms; p99 abuse/none {ratio:.2f}x -> {'PASS' if ok else 'FAIL'} "
          "(target 100% answered, p99 within 2x)", flush=True)
    return {**med, "ratio": ratio, "ok": float(ok)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", choices=("granian", "gunicorn", "both"), default="both")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--slow", type=int, default=64, help="slow-body connections (default 64)")
    parser.add_argument("--waiters", type=int, default=64, help="far-ahead atLeastRevision callers (default 64)")
    parser.add_argument("--legit-conns", type=int, default=8)
    parser.add_argument("--rate", type=float, default=400.0, help="legit requests per second (default 400)")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--body-timeout", type=float, default=3.0, help="the server's --body-timeout")
    parser.add_argument("--source", help="run the sidecar from this source tree instead (PYTHONPATH)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: stop the server
    servers = ["granian", "gunicorn"] if args.server == "both" else [args.server]
    results = [bench(args, server) for server in servers]
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
