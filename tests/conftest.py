"""Integration-test helpers: run the REAL sidecar (`python -m sidecar serve`) as a subprocess.

`Server` starts gunicorn through the chatauthz CLI on a free port with its own data folder,
waits (bounded) for /health/live, and talks to it with `requests` (timeout 10 s, `apikey`
header). Every request opens a new connection, so a restarted server never meets a stale
pooled connection. `kill()` SIGKILLs the whole process group (gunicorn master and workers, as
a crash would), `stop()` SIGTERMs it (bounded wait, then SIGKILL), `restart()` starts again on
the same port and data folder.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.http_client import ApiClient

PROJECT_DIR = Path(__file__).resolve().parent.parent
TEST_API_KEY = "test-full-access-key-0123456789"
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 15.0
HTTP_TIMEOUT_S = 10.0



def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of the process group, from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, _ppid, pgrp = stat.rpartition(")")[2].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            members.append(int(entry.name))
    return members


def unique(prefix: str) -> str:
    """A fresh alpha-dash id (lowercase), so tests sharing a server never collide."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def server_env(api_key: str | None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ without any CHATAUTHZ_* variable, plus the test key and `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATAUTHZ_")}
    if api_key is not None:
        env["CHATAUTHZ_API_KEY"] = api_key
    env.update(extra or {})
    return env


class Server(ApiClient):
    """One real sidecar process (server master + workers) in its own process group."""

    def __init__(self, data_dir: Path, *, workers: int = 1, api_key: str | None = TEST_API_KEY,
                 extra_env: Mapping[str, str] | None = None, port: int | None = None,
                 log_dir: Path | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.workers = workers
        self.api_key = api_key
        self.extra_env = dict(extra_env or {})
        self.port = port or free_port()
        self.log_dir = Path(log_dir) if log_dir else self.data_dir.parent / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self._starts = 0
        self._stdout_path: Path | None = None
        self._stderr_path: Path | None = None

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", "sidecar", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                "--data-dir", str(self.data_dir), "--workers", str(self.workers)]

    def start(self) -> Server:
        assert self.proc is None or self.proc.poll() is not None, "server already running"
        self._starts += 1
        self._stdout_path = self.log_dir / f"server-{self.port}-{self._starts}.out"
        self._stderr_path = self.log_dir / f"server-{self.port}-{self._starts}.err"
        with open(self._stdout_path, "wb") as out, open(self._stderr_path, "wb") as err:
            self.proc = subprocess.Popen(self.command, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                         env=server_env(self.api_key, self.extra_env),
                                         cwd=str(self.log_dir), start_new_session=True)
        self._wait_live()
        return self

    def _wait_live(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the server exited with {self.proc.returncode} before answering "
                            f"/health/live; stderr:\n{self.stderr()}")
            try:
                response = requests.get(self.url + "/health/live", timeout=1.0)
                if response.status_code == 200:
                    return
                last_error = f"HTTP {response.status_code}"
            except requests.RequestException as exc:
                last_error = repr(exc)
            time.sleep(0.05)
        self._killpg()
        self._reap(STOP_TIMEOUT_S)
        pytest.fail(f"the server did not answer /health/live within {START_TIMEOUT_S}s "
                    f"({last_error}); stderr:\n{self.stderr()}")

    def _killpg(self) -> None:
        """SIGKILL every process of the server's group (master and workers)."""
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def _reap(self, timeout: float) -> bool:
        """Wait (bounded) for the master to exit and its whole group to be gone."""
        assert self.proc is not None
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # workers may outlive a killed master briefly
            try:
                os.killpg(self.proc.pid, 0)
            except (ProcessLookupError, PermissionError):
                return True
            time.sleep(0.05)
        self._killpg()
        return True

    def kill(self) -> None:
        """SIGKILL the master and its workers at once: a crash, no clean shutdown."""
        if self.proc is None:
            return
        self._killpg()
        if not self._reap(STOP_TIMEOUT_S):
            pytest.fail(f"server pid {self.proc.pid} survived SIGKILL")

    def stop(self) -> None:
        """SIGTERM (graceful), bounded; SIGKILL if it does not end in time."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            if self._reap(STOP_TIMEOUT_S):
                return
        self.kill()

    def restart(self, *, kill: bool = False) -> Server:
        """Stop (or kill) and start again on the same port and data folder."""
        if kill:
            self.kill()
        else:
            self.stop()
        return self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stderr(self) -> str:
        return self._stderr_path.read_text(errors="replace") if self._stderr_path and self._stderr_path.exists() else ""

    def stdout(self) -> str:
        return self._stdout_path.read_text(errors="replace") if self._stdout_path and self._stdout_path.exists() else ""

    # -- HTTP: request/get/post/put/delete/ok/authorize come from ApiClient --------------
    def revision(self) -> int:
        response = self.get("/health/ready")
        assert response.status_code == 200, response.text
        return int(response.json()["data"]["revision"])


# -- markers: unit, integration, redis (registered in pyproject.toml) --------------------------
# Every test is `unit` (in-process and fast: `pytest -m unit` runs these alone, in seconds) or
# `integration` (starts the sidecar, redis-server or another process, or takes seconds); a test
# that needs redis-server is also `redis`. A test's own marker wins; else its file decides, or a
# fixture it uses that starts a process. A unit test that starts a process anyway fails (below),
# so a slow test cannot hide in `-m unit`. Plain `pytest` runs everything.
INTEGRATION_FILES = {
    "test_api_concurrency.py", "test_api_conformance.py", "test_api_scenarios.py", "test_data_folder.py",
    "test_decision_log.py", "test_fuzz_schemathesis.py", "test_guard_rails.py", "test_hostile_input.py",
    "test_http_api.py", "test_http_durability.py", "test_http_scope_table.py", "test_http_workers.py",
    "test_logging.py", "test_metrics.py", "test_policy_reload.py", "test_policy_settle.py",
    "test_redis_data_loss.py", "test_redis_failover.py", "test_redis_sync.py", "test_redis_writes.py",
    "test_serve_process.py", "test_slow_clients.py",
    "test_differential_authorize_write.py",  # in-process too, but property runs over generated worlds: seconds
    "test_unit_reload.py",  # in-process, but waits for files to settle: real seconds
    # in-process through sidecar.cli.main, but each runs a whole command (policy load, suites, store):
    "test_cli_authorize.py", "test_cli_check.py", "test_cli_export.py",
    "test_docs_walkthrough.py",  # one live server and the docs' shell commands
    "test_explain_trace.py", "test_capabilities_and_lists.py",  # properties over generated worlds: seconds
    "test_import_bulk_write.py",  # redis-server, and properties over generated op lists
    "test_import_differential.py",  # properties over generated files: seconds
}
REDIS_FILES = {"test_redis_data_loss.py", "test_redis_failover.py", "test_redis_sync.py", "test_redis_writes.py"}
PROCESS_FIXTURES = {"server", "start_server", "shared_server", "live", "srv"}  # start `chatauthz serve`
REDIS_FIXTURES = {"module_redis", "own_redis"}  # start redis-server


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if item.path.name in REDIS_FILES or used & REDIS_FIXTURES:
            item.add_marker(pytest.mark.redis)
        if item.get_closest_marker("unit") or item.get_closest_marker("integration"):
            continue
        slow = (item.path.name in INTEGRATION_FILES or item.get_closest_marker("redis") is not None
                or bool(used & PROCESS_FIXTURES))
        item.add_marker(pytest.mark.integration if slow else pytest.mark.unit)


class UnitTestStartedAProcess(AssertionError):
    pass


@pytest.fixture(autouse=True)
def _unit_tests_start_no_process(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test marked unit may not start a process: mark it integration (or give it to a fixture in
    PROCESS_FIXTURES) instead."""
    if request.node.get_closest_marker("unit") is None:
        return

    def refuse(self: Any, *args: Any, **kwargs: Any) -> None:
        raise UnitTestStartedAProcess(f"{request.node.nodeid} is marked unit but starts a process "
                                      f"({args[0] if args else kwargs.get('args')!r}); mark it "
                                      "@pytest.mark.integration (see tests/conftest.py)")
    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


@pytest.fixture(autouse=True)
def _no_chatauthz_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees a CHATAUTHZ_* variable from the outside world."""
    for name in [k for k in os.environ if k.startswith("CHATAUTHZ_")]:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Any]:
    """Factory: start_server(workers=1, api_key=TEST_API_KEY, extra_env=None, name="srv") -> Server.

    Every server started through it is stopped at teardown.
    """
    started: list[Server] = []

    def start(*, workers: int = 1, api_key: str | None = TEST_API_KEY,
              extra_env: Mapping[str, str] | None = None, name: str | None = None) -> Server:
        base = tmp_path / (name or f"srv{len(started)}")
        server = Server(base / "data", workers=workers, api_key=api_key, extra_env=extra_env,
                        log_dir=base / "logs")
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def server(start_server: Any) -> Server:
    """A fresh server (1 worker, empty data folder) for this test alone."""
    return start_server(workers=1)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def module_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One real redis-server (free loopback port) for the tests of one module; each test keeps
    to a prefix of its own. Stopped after the module."""
    from tests.redis_support import RedisServer
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server per module for read-mostly tests; each test uses its own unique uids/guids."""
    base = tmp_path_factory.mktemp("shared")
    srv = Server(base / "data", workers=1, log_dir=base / "logs")
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()
