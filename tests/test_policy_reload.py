"""Hot reload of the policy files under a running server (issue 5, product §5).

The server runs on a COPY of the project's policies (tmp_path/policies/*.yaml, tmp_path/model.conf)
with the watcher polling every 0.2 s. While threads send /authorize continuously:
  * a valid edit (support may createGroup) is served within a bound; every answer is consistent
    with the policy hash it names (old hash: denied, new hash: allowed), no request fails, and a
    worker never goes back to the old policy once it served the new one;
  * an invalid edit (createGroup: maybe) changes no answer; /health/ready turns "degraded" with
    policyProblems naming roles.yaml and the line; fixing the file brings "ready" back and the
    fixed policy serves.
SIGHUP reloads too (the watcher is off there, so SIGHUP is the only way in): a valid edit then
SIGHUP serves the new policy; an invalid edit then SIGHUP keeps the last good one, readiness
degraded; connection errors during the workers' restart are retried, never for more than 5 s.
"""
from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import PROJECT_DIR, Server

WATCH_S = "0.2"
SWITCH_BOUND_S = 5.0
RETRY_CONNECT_S = 5.0
AGENT = "reload-agent"
SUPPORT_CREATE_LINE = 13  # policies/roles.yaml: `      createGroup: deny` under support


class PolicyServer(Server):
    """The conftest Server, started with extra command-line flags."""

    def __init__(self, *args: Any, extra_args: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.extra_args = extra_args

    @property
    def command(self) -> list[str]:
        return [*super().command, *self.extra_args]


def copy_policies(tmp_path: Path) -> Path:
    """tmp_path/policies/*.yaml and tmp_path/model.conf, copied from the project."""
    folder = tmp_path / "policies"
    folder.mkdir()
    for path in (PROJECT_DIR / "policies").glob("*.yaml"):
        shutil.copy(path, folder / path.name)
    shutil.copy(PROJECT_DIR / "model.conf", tmp_path / "model.conf")
    roles = (folder / "roles.yaml").read_text().splitlines()
    assert roles[SUPPORT_CREATE_LINE - 1] == "      createGroup: deny", roles[SUPPORT_CREATE_LINE - 1]
    return folder


def set_support_line(folder: Path, line: int, text: str) -> None:
    """Rewrite one line of roles.yaml in place, as an editor would."""
    path = folder / "roles.yaml"
    lines = path.read_text().splitlines(keepends=True)
    lines[line - 1] = text + "\n"
    path.write_text("".join(lines))


def start_policy_server(tmp_path: Path, folder: Path, *, workers: int, watch: str) -> PolicyServer:
    server = PolicyServer(tmp_path / "data", workers=workers, log_dir=tmp_path / "logs",
                          extra_env={"CHATAUTHZ_POLICY_WATCH_S": watch},
                          extra_args=["--policies", str(folder)])
    server.start()
    return server


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


@dataclass
class Sample:
    start: float
    end: float
    status: int            # 0: the connection failed even after retrying
    data: dict[str, Any]   # the decision, or {"error": ...}
    retried_s: float = 0.0


class Load:
    """Threads asking the same /authorize question continuously; every answer is kept."""

    def __init__(self, srv: Server, body: dict[str, Any], threads: int = 3) -> None:
        self.srv, self.body = srv, body
        self.samples: list[Sample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=RETRY_CONNECT_S + 15)
        assert not any(t.is_alive() for t in self._threads), "a load thread did not stop"

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.monotonic()
            sample = self._one(start)
            with self._lock:
                self.samples.append(sample)
            time.sleep(0.005)

    def _one(self, start: float) -> Sample:
        while True:
            try:
                response = self.srv.post("/authorize", self.body, timeout=10)
            except requests.ConnectionError as exc:
                waited = time.monotonic() - start
                if waited > RETRY_CONNECT_S:
                    return Sample(start, time.monotonic(), 0, {"error": repr(exc)}, waited)
                time.sleep(0.05)
                continue
            try:
                body = response.json()
            except ValueError:
                body = {"error": response.text}
            data = body.get("data", body)
            return Sample(start, time.monotonic(), response.status_code, data, time.monotonic() - start)

    def snapshot(self) -> list[Sample]:
        with self._lock:
            return list(self.samples)

    def wait_for(self, predicate: Callable[[list[Sample]], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.snapshot()):
                return
            time.sleep(0.02)
        raise AssertionError(f"not within {timeout}s: {what}")


def worker_of(sample: Sample) -> str:
    return str(sample.data["decisionId"]).rpartition("-")[0]


def ready(srv: Server) -> tuple[int, dict[str, Any]]:
    response = srv.get("/health/ready", apikey=None)
    return response.status_code, response.json()["data"]


def wait_ready_state(srv: Server, status: str, timeout: float = SWITCH_BOUND_S, confirm: int = 10) -> dict[str, Any]:
    """Poll readiness until `confirm` answers in a row say `status` ("ready" or "degraded"): every
    worker agrees. Invalid policy files alone leave the HTTP status 200: the sidecar still serves
    correctly from its last good policy, and failing readiness would take every replica (all reading
    the same files) out of the load balancer at once (sidecar/api/health.py)."""
    deadline = time.monotonic() + timeout
    streak = 0
    last: Any = None
    while time.monotonic() < deadline:
        code, data = ready(srv)
        last = (code, data)
        streak = streak + 1 if data["status"] == status else 0
        if streak >= confirm:
            assert code == 200, last
            return data
        time.sleep(0.05)
    raise AssertionError(f"readiness did not settle on {status!r} within {timeout}s; last: {last}")


def assert_no_failures(samples: list[Sample]) -> None:
    failed = [(s.status, s.data) for s in samples if s.status != 200]
    assert not failed, failed[:5]


def current_hash(srv: Server) -> str:
    return str(srv.authorize(AGENT, "createGroup")["policyHash"])


# -- the watcher --------------------------------------------------------------------------------------
@pytest.mark.parametrize("workers", [1, 2])
def test_edit_under_load_then_invalid_edit_then_fix(tmp_path: Path, servers: list[Server], workers: int) -> None:
    folder = copy_policies(tmp_path)
    srv = start_policy_server(tmp_path, folder, workers=workers, watch=WATCH_S)
    servers.append(srv)
    srv.ok("PUT", f"/users/{AGENT}", {"role": "support"})
    before = srv.authorize(AGENT, "createGroup")
    assert (before["allowed"], before["code"]) == (False, "ERR_PERMISSION_DENIED"), before
    old_hash = before["policyHash"]
    assert wait_ready_state(srv, "ready")["policyHash"] == old_hash

    # 1. a valid edit, under load
    with Load(srv, {"uid": AGENT, "action": "createGroup"}) as load:
        load.wait_for(lambda s: len(s) >= 30, 10, "30 answers before the edit")
        edited_at = time.monotonic()
        set_support_line(folder, SUPPORT_CREATE_LINE, "      createGroup: allow")
        load.wait_for(lambda s: any(x.status == 200 and x.data.get("allowed") for x in s), SWITCH_BOUND_S,
                      "the new answer")
        first_new = min(x.end for x in load.snapshot() if x.status == 200 and x.data.get("allowed"))
        # keep the load on until every worker has served the new policy a few times
        load.wait_for(lambda s: all(sum(1 for x in s if x.start > first_new + 1.0 and worker_of(x) == w) >= 3
                                    for w in {worker_of(x) for x in s}), 10, "answers after the switch")
    samples = load.snapshot()
    assert_no_failures(samples)
    hashes = {x.data["policyHash"] for x in samples}
    assert len(hashes) == 2 and old_hash in hashes, hashes
    new_hash = (hashes - {old_hash}).pop()
    for x in samples:  # each answer is the one of the policy it names: never a mixed policy
        if x.data["policyHash"] == old_hash:
            assert (x.data["allowed"], x.data["code"]) == (False, "ERR_PERMISSION_DENIED"), x
            assert "roles.yaml" in x.data["reason"], x
        else:
            assert x.data["allowed"] is True and "code" not in x.data, x
    assert first_new - edited_at <= SWITCH_BOUND_S
    late = [x for x in samples if x.start > edited_at + SWITCH_BOUND_S]
    assert all(x.data["policyHash"] == new_hash for x in late)
    served = {worker_of(x) for x in samples}
    assert len(served) == workers, served
    for worker in served:  # a worker never goes back to the old policy once it served the new one
        switched = min(x.end for x in samples if worker_of(x) == worker and x.data["policyHash"] == new_hash)
        stale = [x for x in samples if worker_of(x) == worker and x.start > switched and x.data["policyHash"] == old_hash]
        assert not stale, stale[:3]
    assert wait_ready_state(srv, "ready")["policyHash"] == new_hash
    # the other roles and the runtime state are untouched by the reload
    assert srv.ok("GET", f"/users/{AGENT}")["data"]["role"] == "support"
    assert srv.authorize(AGENT, "blockUser")["allowed"] is False
    assert srv.authorize("reload-plain", "createGroup")["policyHash"] == new_hash

    # 2. an invalid edit: nothing changes in the answers, readiness degraded
    with Load(srv, {"uid": AGENT, "action": "createGroup"}) as load:
        load.wait_for(lambda s: len(s) >= 10, 10, "answers before the invalid edit")
        broken_at = time.monotonic()
        set_support_line(folder, SUPPORT_CREATE_LINE, "      createGroup: maybe")
        degraded = wait_ready_state(srv, "degraded")
        load.wait_for(lambda s: sum(1 for x in s if x.start > broken_at + 1.0) >= 20, 10, "answers after the edit")
    samples = load.snapshot()
    assert_no_failures(samples)
    assert {(x.data["allowed"], x.data["policyHash"]) for x in samples} == {(True, new_hash)}
    assert degraded["status"] == "degraded", degraded
    assert degraded["policyHash"] == new_hash
    problems = degraded["policyProblems"]
    assert any(p.startswith(f"roles.yaml:{SUPPORT_CREATE_LINE}:") and "createGroup" in p and "maybe" in p
               for p in problems), problems
    assert any("invalid" in reason for reason in degraded["reasons"]), degraded

    # 3. the fix (with one more change, so the fixed policy is told apart): ready again, and it serves
    set_support_line(folder, SUPPORT_CREATE_LINE, "      createGroup: allow")
    set_support_line(folder, SUPPORT_CREATE_LINE + 1, "      blockUser: allow")
    recovered = wait_ready_state(srv, "ready")
    assert recovered["status"] == "ready" and "policyProblems" not in recovered, recovered
    fixed_hash = recovered["policyHash"]
    assert fixed_hash not in (old_hash, new_hash)
    for _ in range(10 * workers):
        blocked = srv.authorize(AGENT, "blockUser")
        assert (blocked["allowed"], blocked["policyHash"]) == (True, fixed_hash), blocked
        created = srv.authorize(AGENT, "createGroup")
        assert (created["allowed"], created["policyHash"]) == (True, fixed_hash), created


# -- SIGHUP -------------------------------------------------------------------------------------------
def sighup_and_wait(srv: Server, load: Load, seen_before: set[str], expected: Callable[[Sample], bool],
                    what: str) -> float:
    """SIGHUP the server's process group (master and workers); wait (bounded) until new worker
    processes answer, their answers as expected."""
    assert srv.proc is not None
    sent = time.monotonic()
    os.killpg(srv.proc.pid, signal.SIGHUP)

    def settled(samples: list[Sample]) -> bool:
        fresh = [x for x in samples if x.start > sent and x.status == 200 and worker_of(x) not in seen_before]
        return len(fresh) >= 5 and all(expected(x) for x in fresh[-5:])
    load.wait_for(settled, 20, f"restarted workers serving {what} after SIGHUP")
    return sent


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_reloads_and_keeps_the_last_good_policy(tmp_path: Path, servers: list[Server], workers: int) -> None:
    folder = copy_policies(tmp_path)
    srv = start_policy_server(tmp_path, folder, workers=workers, watch="0")  # no watcher: SIGHUP alone reloads
    servers.append(srv)
    srv.ok("PUT", f"/users/{AGENT}", {"role": "support"})
    old_hash = current_hash(srv)

    with Load(srv, {"uid": AGENT, "action": "createGroup"}) as load:
        load.wait_for(lambda s: len({worker_of(x) for x in s if x.status == 200}) >= workers and len(s) >= 20, 10,
                      "every worker answering")
        workers_before = {worker_of(x) for x in load.snapshot() if x.status == 200}
        # a valid edit is not seen without the watcher ...
        set_support_line(folder, SUPPORT_CREATE_LINE, "      createGroup: allow")
        time.sleep(0.5)
        assert not any(x.data.get("allowed") for x in load.snapshot())
        # ... SIGHUP brings it in
        sighup_and_wait(srv, load, workers_before, lambda x: x.data.get("allowed") is True, "the edited policy")
        new_hash = next(x.data["policyHash"] for x in reversed(load.snapshot()) if x.data.get("allowed"))
        assert new_hash != old_hash
        workers_mid = {worker_of(x) for x in load.snapshot() if x.status == 200}

        # an invalid edit, then SIGHUP: the last good policy keeps serving
        set_support_line(folder, SUPPORT_CREATE_LINE, "      createGroup: maybe")
        broken_sent = sighup_and_wait(srv, load, workers_mid, lambda x: x.data.get("policyHash") == new_hash,
                                      "the last good policy")
        degraded = wait_ready_state(srv, "degraded", timeout=10)
        load.wait_for(lambda s: sum(1 for x in s if x.start > broken_sent + 0.5) >= 10, 10, "answers after SIGHUP")
    samples = load.snapshot()
    assert_no_failures(samples)  # no 5xx, and no connection refused for longer than the bounded blip
    assert max(x.retried_s for x in samples) <= RETRY_CONNECT_S
    for x in samples:
        assert x.data["policyHash"] in (old_hash, new_hash), x
        assert x.data["allowed"] is (x.data["policyHash"] == new_hash), x
    assert all(x.data["policyHash"] == new_hash for x in samples if x.start > broken_sent)
    assert degraded["status"] == "degraded" and degraded["policyHash"] == new_hash, degraded
    assert any(p.startswith(f"roles.yaml:{SUPPORT_CREATE_LINE}:") for p in degraded["policyProblems"]), degraded
    assert srv.ok("GET", f"/users/{AGENT}")["data"]["role"] == "support"  # runtime state survived the restarts
