"""Several gunicorn workers on the embedded store see each other's writes from the next request on.

Every request (writes included) opens a new connection (`Connection: close`), so the kernel hands
it to either worker. The decisionId is "<worker prefix>-<counter>" with a prefix per worker
process: each round keeps asking until both workers have answered (bounded), and every answer
must already reflect the acknowledged write.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import Server, unique

MIN_REQUESTS = 40
MAX_REQUESTS = 400


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One 2-worker server for the module; each test uses its own unique ids."""
    base = tmp_path_factory.mktemp("workers")
    srv = Server(base / "data", workers=2, log_dir=base / "logs")
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()


def worker_of(decision: dict[str, Any]) -> str:
    prefix, _, counter = decision["decisionId"].rpartition("-")
    assert prefix and counter.isdigit(), decision
    return prefix


def ask_everyone(srv: Server, request: dict[str, Any], check: Callable[[dict[str, Any]], None]) -> Counter[str]:
    """At least MIN_REQUESTS authorize calls, each on a new connection, until two workers answered."""
    seen: Counter[str] = Counter()
    for i in range(MAX_REQUESTS):
        if i >= MIN_REQUESTS and len(seen) >= 2:
            break
        decision = srv.authorize(**request)
        check(decision)
        seen[worker_of(decision)] += 1
    assert len(seen) == 2, f"only {len(seen)} worker(s) answered {sum(seen.values())} new connections: {seen}"
    return seen


def test_two_workers_see_every_write_from_the_next_request_on(two_workers: Server) -> None:
    srv = two_workers
    role, uid = unique("flip"), unique("user")
    srv.ok("POST", "/roles", {"role": role, "name": "Flip-flop"})
    srv.ok("PUT", f"/users/{uid}", {"role": role})
    request = {"uid": uid, "action": "sendMessage", "context": {"messageType": "text"}}
    workers: Counter[str] = Counter()
    last_revision = 0
    for round_no, value in enumerate(["deny", "allow", "deny", "allow", "deny", "allow"]):
        written = srv.ok("PUT", f"/roles/{role}/permissions", {"permissions": {"sendMessage": value}})
        revision = written["revision"]
        assert revision > last_revision
        last_revision = revision

        def check(decision: dict[str, Any], value: str = value, revision: int = revision,
                  round_no: int = round_no) -> None:
            assert decision["allowed"] is (value == "allow"), (round_no, value, decision)
            assert decision["revision"] >= revision, (round_no, decision)
            assert decision["role"] == role

        workers.update(ask_everyone(srv, request, check))
    assert len(workers) == 2, workers


def test_two_workers_see_membership_and_role_writes(two_workers: Server) -> None:
    srv = two_workers
    guid, owner, uid = unique("grp"), unique("owner"), unique("member")
    srv.ok("PUT", f"/groups/{guid}", {"owner": owner})
    steps: list[tuple[str, str, dict[str, Any] | None, dict[str, Any], tuple[bool, str | None, str | None]]] = [
        # (method, path, body, authorize request, (allowed, code, scope))
        ("PUT", f"/groups/{guid}/members/{uid}", {"scope": "participant"},
         {"uid": uid, "action": "editGroup", "guid": guid}, (False, "ERR_PERMISSION_DENIED", "participant")),
        ("PUT", f"/groups/{guid}/members/{uid}", {"scope": "moderator"},
         {"uid": uid, "action": "editGroup", "guid": guid}, (True, None, "moderator")),
        ("DELETE", f"/groups/{guid}/members/{uid}", None,
         {"uid": uid, "action": "editGroup", "guid": guid}, (False, "ERR_GROUP_NOT_JOINED", None)),
        ("PUT", f"/users/{uid}", {"role": "support"},
         {"uid": uid, "action": "createGroup"}, (False, "ERR_PERMISSION_DENIED", None)),
        ("PUT", f"/users/{uid}", {"role": "default"},
         {"uid": uid, "action": "createGroup"}, (True, None, None)),
        ("PUT", f"/groups/{guid}/members/{uid}", {"scope": "admin"},
         {"uid": uid, "action": "deleteGroup", "guid": guid}, (True, None, "admin")),
    ]
    for method, path, body, request, (allowed, code, scope) in steps:
        written = srv.ok(method, path, body)
        revision = written["revision"]

        def check(decision: dict[str, Any], allowed: bool = allowed, code: str | None = code,
                  scope: str | None = scope, revision: int = revision, path: str = path) -> None:
            assert (decision["allowed"], decision.get("code"), decision.get("scope")) == (allowed, code, scope), (
                path, decision)
            assert decision["revision"] >= revision, (path, decision)

        ask_everyone(srv, request, check)


def test_reads_on_either_worker_see_writes_made_on_the_other(two_workers: Server) -> None:
    """Management reads (GET) too: after each write, 20 GETs on new connections all show it."""
    srv = two_workers
    role = unique("named")
    srv.ok("POST", "/roles", {"role": role, "name": "v0"})
    for version in range(1, 5):
        written = srv.ok("PUT", f"/roles/{role}", {"name": f"v{version}"})
        for _ in range(20):
            assert srv.ok("GET", f"/roles/{role}")["data"]["name"] == f"v{version}"
            assert srv.revision() >= written["revision"]
