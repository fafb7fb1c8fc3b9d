"""A pytest fixture for the app's own tests: `chatauthz_sidecar`, a real sidecar (`chatauthz
serve` on a Unix socket in the test's tmp_path) seeded with a `world:` YAML file, and a Client
on it. Enable it with `pytest_plugins = ["sidecar.client.pytest_plugin"]` in a conftest.py or
`-p sidecar.client.pytest_plugin`; name the world with

    @pytest.mark.chatauthz_world("worlds/chat.yaml")   # relative to the test file
    [pytest] chatauthz_world = tests/world.yaml         # relative to the rootdir (the default world)

The world file is the format of `chatauthz authorize --world` and the policy suites (a `world:`
mapping, or its keys at the top: users, roles, groups). `chatauthz_policies` (ini) names another
policy folder. Each test gets a fresh sidecar; it is stopped (its process group) at teardown.
"""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from sidecar.client.errors import SidecarError
from sidecar.client.http import Client

if TYPE_CHECKING:
    from sidecar.state import Op

START_TIMEOUT_S = 30.0


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("chatauthz_world", "world: YAML file seeding the chatauthz_sidecar fixture (relative to rootdir)")
    parser.addini("chatauthz_policies", "policy folder for the chatauthz_sidecar fixture (default: the shipped one)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "chatauthz_world(path): the world: YAML file the chatauthz_sidecar fixture "
                            "seeds its sidecar with (relative to the test file)")


def seed(data_dir: Path, world: Path, policies: Path | None = None) -> None:
    """Write a world file's ops into a fresh data folder, as the management API would (one write)."""
    from sidecar.config import DEFAULT_POLICIES
    from sidecar.policy import load_policy
    from sidecar.policy.yamlio import LineDict, parse_yaml_all
    from sidecar.suites.world import WorldBuilder

    policy = load_policy(policies or DEFAULT_POLICIES)
    data, problems = parse_yaml_all(world.read_text(encoding="utf-8"), world.name)
    spec = data.get("world") if isinstance(data, LineDict) and "world" in data else data
    line = data.line_of("world") if isinstance(data, LineDict) else 1
    ops = WorldBuilder(policy, lambda at, message: problems.append(f"{world}:{at}: {message}")).ops(spec, line, ())
    if problems:
        raise pytest.UsageError("chatauthz_world: invalid world:\n  " + "\n  ".join(sorted(problems)))
    seed_ops(data_dir, ops, policies)


def seed_ops(data_dir: Path, ops: Iterable[Op], policies: Path | None = None) -> None:
    """Commit these ops (a world's) into the data folder's store, as one write."""
    from sidecar.compose import build_sidecar
    from sidecar.config import DEFAULT_POLICIES, Settings

    core = build_sidecar(Settings(data_dir=data_dir, policies=policies or DEFAULT_POLICIES), start_threads=False)
    try:
        ops = list(ops)
        if ops:
            core.write(lambda tx: (ops, None), "pytest")
    finally:
        getattr(core.store, "close", lambda: None)()


def _world_path(request: pytest.FixtureRequest) -> Path | None:
    marker = request.node.get_closest_marker("chatauthz_world")
    if marker is not None and marker.args:
        return Path(request.node.path).parent / str(marker.args[0])
    configured = request.config.getini("chatauthz_world")
    return Path(request.config.rootpath) / str(configured) if configured else None


@pytest.fixture
def chatauthz_sidecar(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    """A Client on a fresh real sidecar seeded with the test's world (see the module docstring)."""
    base = tmp_path_factory.mktemp("chatauthz")
    data_dir, sock = base / "data", base / "sidecar.sock"
    configured = request.config.getini("chatauthz_policies")
    policies = Path(request.config.rootpath) / str(configured) if configured else None
    world = _world_path(request)
    if world is not None:
        seed(data_dir, world, policies)
    key = secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATAUTHZ_")}
    env["CHATAUTHZ_API_KEY"] = key
    command = [sys.executable, "-m", "sidecar", "serve", "--uds", str(sock), "--data-dir", str(data_dir)]
    if policies is not None:
        command += ["--policies", str(policies)]
    with open(base / "sidecar.log", "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    client = Client(f"unix://{sock}", api_key=key, timeout=5.0)
    try:
        _wait_ready(proc, client, base / "sidecar.log")
        yield client
    finally:
        client.close()
        _stop(proc)


def _wait_ready(proc: subprocess.Popen[bytes], client: Client, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the chatauthz sidecar exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        try:
            client.check("chatauthz-probe", "createGroup")
            return
        except SidecarError:
            time.sleep(0.05)
    _stop(proc)
    pytest.fail(f"the chatauthz sidecar did not answer within {START_TIMEOUT_S}s:\n{log.read_text(errors='replace')}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM its process group (server and workers), bounded; then SIGKILL."""
    for signum, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
