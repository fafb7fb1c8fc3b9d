"""`chatauthz serve` as a process: it owns its port alone, and it ends when told.

(a) A second server on a port that another process holds exits 2 with a one-line reason, before it
    says "listening", and the first keeps answering every request; nobody can bind the port beside
    a running server (no SO_REUSEPORT), so the kernel never splits connections between two servers;
    SIGHUP keeps that socket.
(b) SIGINT to the process group (Ctrl-C), under load, ends the server and all its workers within
    5 s, every time.
(c) gunicorn starts cleanly with an unwritable HOME and working folder (the container's user has
    HOME=/nonexistent): no control-socket error.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import Server, group_members, server_env, unique

SERVERS = ("granian", "gunicorn")
SECOND_EXIT_TIMEOUT_S = 20.0
CTRL_C_ROUNDS = 20
CTRL_C_DEADLINE_S = 5.0


def serve_command(port: int, data_dir: Path) -> list[str]:
    return [sys.executable, "-m", "sidecar", "serve", "--host", "127.0.0.1", "--port", str(port),
            "--data-dir", str(data_dir)]


def wait_group_gone(proc: subprocess.Popen[bytes], timeout: float) -> list[int]:
    """Reap the master and wait (bounded) until its group is empty; the survivors, if any."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.poll()
        if not group_members(proc.pid):
            return []
        time.sleep(0.05)
    proc.poll()
    return group_members(proc.pid)


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A foreign process's socket on a free port, with SO_REUSEPORT (as granian's own are)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield sock
    sock.close()


def run_second(port: int, data_dir: Path, server: str, log_dir: Path,
               meanwhile: Callable[[], object] = lambda: None) -> tuple[int | None, str, str]:
    """Start `serve` on `port`, wait (bounded) for it to exit, call `meanwhile` (the second server
    still runs if it did not exit), stop it: (exit code or None, stdout, stderr)."""
    out, err = log_dir / f"second-{server}.out", log_dir / f"second-{server}.err"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        proc = subprocess.Popen(serve_command(port, data_dir), stdout=stdout, stderr=stderr,
                                stdin=subprocess.DEVNULL, cwd=str(log_dir), start_new_session=True,
                                env=server_env(None, {"CHATAUTHZ_SERVER": server}))
    try:
        code: int | None = proc.wait(timeout=SECOND_EXIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        code = None
    try:
        meanwhile()
    finally:
        kill_group(proc.pid)
        proc.wait(timeout=10)
    return code, out.read_text(errors="replace"), err.read_text(errors="replace")


def assert_refused(code: int | None, stdout: str, stderr: str, port: int) -> None:
    where = f"exit {code}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    assert code == 2, where
    assert "listening" not in stdout + stderr, where
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and str(port) in lines[0] and "in use" in lines[0], where
    assert "Traceback" not in stderr, where


# -- (a) one server per port ---------------------------------------------------------------------
@pytest.mark.parametrize("first", SERVERS)
@pytest.mark.parametrize("second", SERVERS)
def test_a_second_server_on_a_busy_port_exits_2(tmp_path: Path, first: str, second: str) -> None:
    srv = Server(tmp_path / "first" / "data", extra_env={"CHATAUTHZ_SERVER": first}, log_dir=tmp_path / "logs")
    try:
        srv.start()
        role, uid = unique("only-here"), unique("user")
        srv.ok("POST", "/roles", {"role": role, "name": "Only on the first server"})
        srv.ok("PUT", f"/users/{uid}", {"role": role})
        answers: list[tuple[int, str | None]] = []

        def ask() -> None:  # each on a new connection; another server would not know the key nor the role
            for _ in range(30):
                response = srv.post("/authorize", {"uid": uid, "action": "sendMessage",
                                                   "context": {"messageType": "text"}})
                answers.append((response.status_code, response.json().get("data", {}).get("role")))

        code, stdout, stderr = run_second(srv.port, tmp_path / "second" / "data", second, tmp_path / "logs", ask)
        assert answers == [(200, role)] * 30, "another server answered some requests"
        assert_refused(code, stdout, stderr, srv.port)
        assert not (tmp_path / "second" / "data").exists(), "the refused server wrote to its data folder"
    finally:
        srv.stop()


@pytest.mark.parametrize("server", SERVERS)
def test_a_port_held_by_another_process_is_refused(tmp_path: Path, listener: socket.socket, server: str) -> None:
    port = listener.getsockname()[1]
    code, stdout, stderr = run_second(port, tmp_path / "data", server, tmp_path)
    assert_refused(code, stdout, stderr, port)


@pytest.mark.parametrize("server", SERVERS)
def test_nobody_can_bind_beside_a_running_server(tmp_path: Path, server: str) -> None:
    """Not even with SO_REUSEPORT from the same user: the server's socket does not allow it."""
    srv = Server(tmp_path / "data", workers=2, extra_env={"CHATAUTHZ_SERVER": server}, log_dir=tmp_path / "logs")
    try:
        srv.start()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            with pytest.raises(OSError, match="in use"):
                sock.bind(("127.0.0.1", srv.port))
        assert srv.get("/health/live").status_code == 200
    finally:
        srv.stop()


@pytest.mark.parametrize("server", SERVERS)
def test_sighup_keeps_serving_on_the_same_socket(tmp_path: Path, server: str) -> None:
    """SIGHUP to the server (new workers, config reloaded) keeps the socket that serve bound."""
    srv = Server(tmp_path / "data", workers=2, extra_env={"CHATAUTHZ_SERVER": server}, log_dir=tmp_path / "logs")
    try:
        srv.start()
        assert srv.proc is not None
        for _ in range(2):
            os.kill(srv.proc.pid, signal.SIGHUP)
            time.sleep(1.5)
            assert [srv.get("/health/live").status_code for _ in range(20)] == [200] * 20
        assert srv.running
    finally:
        srv.stop()


# -- (b) Ctrl-C ----------------------------------------------------------------------------------
def load(srv: Server, stop: threading.Event, answered: list[int]) -> None:
    """/authorize on new connections until told to stop; errors once the server is going are fine."""
    while not stop.is_set():
        try:
            response = requests.post(srv.url + "/authorize", json={"uid": "u1", "action": "createGroup"},
                                     headers={"apikey": srv.api_key or "", "Connection": "close"}, timeout=2)
            answered.append(response.status_code)
        except requests.RequestException:
            time.sleep(0.01)


@pytest.mark.timeout(150)
def test_ctrl_c_under_load_ends_every_process(tmp_path: Path) -> None:
    """20 rounds, granian and gunicorn in turn, each with 2 workers under /authorize load."""
    survivors: dict[str, list[int]] = {}
    tracebacks: list[str] = []
    for round_no in range(CTRL_C_ROUNDS):
        name = SERVERS[round_no % len(SERVERS)]
        srv = Server(tmp_path / name / "data", workers=2, extra_env={"CHATAUTHZ_SERVER": name},
                     log_dir=tmp_path / name / f"logs{round_no}")
        try:
            srv.start()
            assert srv.proc is not None
            stop, answered = threading.Event(), list[int]()
            threads = [threading.Thread(target=load, args=(srv, stop, answered), daemon=True) for _ in range(3)]
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + 10
            while len(answered) < 10 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert answered and set(answered) == {200}, answered[:20]
            os.killpg(srv.proc.pid, signal.SIGINT)
            left = wait_group_gone(srv.proc, CTRL_C_DEADLINE_S)
            stop.set()
            for thread in threads:
                thread.join(timeout=5)
            if "Traceback" in srv.stderr():
                tracebacks.append(srv.stderr())
            if left:
                survivors[f"round {round_no} ({name})"] = left
                break
        finally:
            srv.kill()
    assert survivors == {}, f"processes still there {CTRL_C_DEADLINE_S}s after SIGINT"
    assert tracebacks == []


# -- (c) gunicorn in the container's conditions ----------------------------------------------------
def test_gunicorn_starts_cleanly_without_a_writable_home_or_working_folder(tmp_path: Path) -> None:
    """The image's user has HOME=/nonexistent; gunicorn's control socket lived in $HOME/.gunicorn
    and logged "Control server error: Permission denied" at every start. Here HOME is a path under
    a regular file (unwritable even by root, who may run these tests) and the working folder is
    read-only (for a user other than root)."""
    (tmp_path / "a-file").write_text("")
    home = tmp_path / "a-file" / "home"
    logs = tmp_path / "logs"
    srv = Server(tmp_path / "data", workers=2, log_dir=logs,
                 extra_env={"CHATAUTHZ_SERVER": "gunicorn", "HOME": str(home), "XDG_RUNTIME_DIR": ""})
    logs.chmod(0o555)  # the server's working folder
    try:
        srv.start()
        for _ in range(5):
            assert srv.get("/health/live").status_code == 200
        time.sleep(1.0)  # gunicorn starts its control server once the workers are up
        srv.stop()
        stderr = srv.stderr()
        for needle in ("Control server error", "control socket", "Permission denied", "Traceback"):
            assert needle.lower() not in stderr.lower(), stderr
    finally:
        srv.stop()
        logs.chmod(0o755)
