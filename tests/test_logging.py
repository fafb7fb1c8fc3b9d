"""Logs: JSON lines with request ids, no secrets, and a stuck log sink never stalls requests."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.conftest import TEST_API_KEY, Server, free_port, server_env


def test_management_writes_log_json_with_the_callers_request_id(server: Server) -> None:
    response = server.put("/users/logged-user", json={"role": "support"}, headers={"X-Request-Id": "trace-42"})
    assert response.status_code == 200
    assert response.headers["X-Request-Id"] == "trace-42"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [json.loads(line) for line in server.stderr().splitlines() if line.startswith("{")]
        mine = [entry for entry in lines if entry.get("requestId") == "trace-42"]
        if mine:
            break
        time.sleep(0.1)
    assert mine, server.stderr()
    assert mine[0]["route"] == "/users/<uid>" and mine[0]["actor"] == "admin" and mine[0]["status"] == 200


def test_a_made_up_request_id_comes_back_and_a_hostile_one_is_replaced(server: Server) -> None:
    made = server.post("/authorize", json={"uid": "a", "action": "sendMessage"})
    assert len(made.headers["X-Request-Id"]) == 32
    hostile = server.post("/authorize", json={"uid": "a", "action": "sendMessage"},
                          headers={"X-Request-Id": "x" * 500})
    assert hostile.headers["X-Request-Id"] != "x" * 500


def test_no_secret_reaches_the_logs(start_server: object, tmp_path: Path) -> None:
    server = start_server(extra_env={"CHATAUTHZ_AUTHORIZE_KEY": "authorize-secret-key"})  # type: ignore[operator]
    server.post("/roles", json={"role": "r1", "name": "R"})
    server.post("/roles", json={"role": "r1", "name": "R"}, apikey="wrong-secret-key")
    server.post("/authorize", json={"uid": "a", "action": "sendMessage"}, apikey="authorize-secret-key")
    time.sleep(0.5)
    logs = server.stderr() + server.stdout()
    for secret in (TEST_API_KEY, "wrong-secret-key", "authorize-secret-key"):
        assert secret not in logs


def test_a_stuck_stderr_never_stalls_requests(tmp_path: Path) -> None:
    """stderr is a pipe nobody reads: after it fills, logging must drop lines, not block."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sidecar", "serve", "--port", str(port),
                             "--data-dir", str(tmp_path / "data"), "--workers", "1"],
                            env=server_env(TEST_API_KEY), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                requests.get(base + "/health/live", timeout=1)
                break
            except requests.RequestException:
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.1)
        session = requests.Session()
        session.headers.update({"apikey": TEST_API_KEY, "X-Request-Id": "p" * 100})
        started = time.monotonic()
        for i in range(1500):  # ~300 bytes of log each: several times a pipe's 64 KiB
            response = session.put(f"{base}/users/u{i}", json={"role": "support"}, timeout=5)
            assert response.status_code == 200
        assert time.monotonic() - started < 60
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert proc.stderr is not None
        proc.stderr.close()
