"""Concurrent member operations through a real server with two worker processes (issue 3).

8 threads x 40 operations add, kick, change the scope of, ban and unban the same six users of one
group, each request on a new connection (so either worker answers). Some are refused (4xx): that
is fine; none may be a 5xx. Afterwards:
  * the change log (GET /changes?since=0, every page) has revisions 1..N without gaps, N being the
    server's revision;
  * replaying the log's ops in revision order into a plain dict model gives exactly the state the
    API shows (GET /groups/g/members and /bannedusers, every page);
  * every op's `before` equals the model's value just before it: the writes were serial;
  * every acknowledged single-member write is in the log under the revision it answered with.
"""
from __future__ import annotations

import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import Server

THREADS = 8
OPS_PER_THREAD = 40
UIDS = [f"cc-user-{i}" for i in range(6)]
SCOPES = ("admin", "moderator", "participant")
GUID = "cc-group"
OWNER = "cc-owner"


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("concurrency")
    srv = Server(base / "data", workers=2, log_dir=base / "logs")
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()


@dataclass
class Call:
    kind: str
    uid: str
    method: str
    path: str
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 0
    answer: Any = None


def plan_calls(seed: int) -> list[Call]:
    rng = random.Random(seed)
    calls = []
    for _ in range(OPS_PER_THREAD):
        uid = rng.choice(UIDS)
        kind = rng.choice(["add", "add-many", "scope", "scope", "kick", "ban", "unban", "ban-via-add", "obo-scope"])
        if kind == "add":
            calls.append(Call(kind, uid, "POST", f"/groups/{GUID}/members", {f"{rng.choice(SCOPES)}s": [uid]}))
        elif kind == "add-many":
            others = rng.sample(UIDS, 3)
            calls.append(Call(kind, uid, "POST", f"/groups/{GUID}/members",
                              {"participants": others[:2], "moderators": others[2:]}))
        elif kind in ("scope", "obo-scope"):
            headers = {"onBehalfOf": OWNER} if kind == "obo-scope" else {}
            calls.append(Call(kind, uid, "PUT", f"/groups/{GUID}/members/{uid}", {"scope": rng.choice(SCOPES)}, headers))
        elif kind == "kick":
            calls.append(Call(kind, uid, "DELETE", f"/groups/{GUID}/members/{uid}", None))
        elif kind == "ban":
            calls.append(Call(kind, uid, "POST", f"/groups/{GUID}/bannedusers/{uid}", None))
        elif kind == "unban":
            calls.append(Call(kind, uid, "DELETE", f"/groups/{GUID}/bannedusers/{uid}", None))
        else:
            calls.append(Call(kind, uid, "POST", f"/groups/{GUID}/members", {"usersToBan": [uid]}))
    return calls


def run_calls(srv: Server, calls: list[Call]) -> list[Call]:
    for call in calls:
        response = srv.request(call.method, call.path, json=call.body, headers=call.headers)
        call.status = response.status_code
        try:
            call.answer = response.json()
        except ValueError:
            call.answer = response.text
    return calls


def all_pages(srv: Server, path: str, per_page: int) -> list[Any]:
    items: list[Any] = []
    joiner = "&" if "?" in path else "?"
    for page in range(1, 10_000):
        body = srv.ok("GET", f"{path}{joiner}perPage={per_page}&page={page}")
        pagination = body["meta"]["pagination"]
        assert pagination["count"] == len(body["data"]) and pagination["current_page"] == page
        items += body["data"]
        if page >= pagination["total_pages"]:
            assert len(items) == pagination["total"], pagination
            return items
    raise AssertionError(f"{path}: too many pages")


class Model:
    """The runtime state the ops describe, as plain dicts; checks each op's `before` as it goes."""

    def __init__(self) -> None:
        self.owners: dict[str, str] = {}
        self.members: dict[str, dict[str, str]] = {}
        self.bans: dict[str, set[str]] = {}

    def scope(self, guid: str, uid: str) -> str | None:
        return self.members.get(guid, {}).get(uid)

    def banned(self, guid: str, uid: str) -> bool:
        return uid in self.bans.get(guid, set())

    def apply(self, revision: int, op: dict[str, Any]) -> None:
        name, guid = op["op"], op.get("guid")
        where = f"revision {revision}: {op}"
        if name in ("put_member", "delete_member", "ban", "unban"):
            uid = op["uid"]
            assert op["before"] == {"scope": self.scope(guid, uid), "banned": self.banned(guid, uid)}, where
        if name == "put_member":
            self.members.setdefault(guid, {})[op["uid"]] = op["scope"]
        elif name == "delete_member":
            self.members.get(guid, {}).pop(op["uid"], None)
        elif name == "ban":
            self.members.get(guid, {}).pop(op["uid"], None)
            self.bans.setdefault(guid, set()).add(op["uid"])
        elif name == "unban":
            self.bans.get(guid, set()).discard(op["uid"])
        elif name == "put_group":
            assert op["before"]["owner"] == self.owners.get(guid), where
            self.owners[guid] = op["owner"]
        elif name == "delete_group":
            for table in (self.owners, self.members, self.bans):
                table.pop(guid, None)
        else:
            raise AssertionError(f"unexpected op in the log at {where}")


def test_concurrent_member_writes_equal_a_serial_replay_of_the_change_log(two_workers: Server) -> None:
    srv = two_workers
    assert srv.revision() == 0
    srv.ok("PUT", f"/groups/{GUID}", {"owner": OWNER})

    plans = [plan_calls(seed) for seed in range(THREADS)]
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        done = [call for calls in pool.map(lambda calls: run_calls(srv, calls), plans) for call in calls]
    assert len(done) == THREADS * OPS_PER_THREAD

    server_errors = [(c.kind, c.method, c.path, c.body, c.status, c.answer) for c in done if c.status >= 500]
    assert not server_errors, server_errors
    unexpected = [(c.kind, c.path, c.status, c.answer) for c in done if c.status not in (200, 400, 403)]
    assert not unexpected, unexpected
    ok = [c for c in done if c.status == 200]
    refusals = [c for c in done if c.status != 200]
    assert ok and refusals, "the mix should have both done and refused operations"
    for call in refusals:
        assert call.answer["error"]["code"] in {"ERR_SAME_SCOPE", "ERR_NOT_A_MEMBER", "ERR_ALREADY_BANNED",
                                                "ERR_NOT_A_BANNED_USER", "ERR_BANNED_GROUPMEMBER"}, call
    for call in ok:
        assert isinstance(call.answer["revision"], int) and call.answer["revision"] >= 1, call

    # the change log: revisions 1..N without gaps, N the server's revision
    log = all_pages(srv, "/changes?since=0", per_page=50)
    revisions = [entry["revision"] for entry in log]
    final = srv.revision()
    assert revisions == list(range(1, final + 1)), (revisions[:5], final)
    assert all(entry["actor"] == "admin" for entry in log)

    # a serial replay equals the state the API shows
    model = Model()
    for entry in log:
        for op in entry["ops"]:
            model.apply(entry["revision"], op)
    members = {m["uid"]: m["scope"] for m in all_pages(srv, f"/groups/{GUID}/members", per_page=3)}
    banned = {b["uid"] for b in all_pages(srv, f"/groups/{GUID}/bannedusers", per_page=2)}
    assert members == model.members.get(GUID, {}), (members, model.members)
    assert banned == model.bans.get(GUID, set()), (banned, model.bans)
    assert model.owners == {GUID: OWNER}
    assert not set(members) & banned  # nobody is both a member and banned
    group = srv.ok("GET", f"/groups/{GUID}")["data"]
    assert (group["membersCount"], group["bannedCount"]) == (len(members), len(banned))

    # every acknowledged single-member write is in the log under its revision, once
    by_revision = {entry["revision"]: entry["ops"] for entry in log}
    expected_op = {"scope": "put_member", "obo-scope": "put_member", "kick": "delete_member", "ban": "ban",
                   "unban": "unban"}
    acknowledged: list[int] = []
    for call in ok:
        if call.kind in expected_op:
            ops = by_revision[call.answer["revision"]]
            assert [(op["op"], op["uid"]) for op in ops] == [(expected_op[call.kind], call.uid)], (call, ops)
            if call.kind in ("scope", "obo-scope"):
                assert ops[0]["scope"] == call.body["scope"] == call.answer["data"]["scope"]
            acknowledged.append(call.answer["revision"])
        else:  # an add: what it reported as done is in the log under its revision
            added = {uid for results in call.answer["data"].values() for uid, r in results.items() if r["success"]}
            if added:
                ops = by_revision[call.answer["revision"]]
                assert {op["uid"] for op in ops} == added, (call, ops)
                acknowledged.append(call.answer["revision"])
    assert len(acknowledged) == len(set(acknowledged)), "two acknowledged writes share a revision"
    assert set(acknowledged) == set(range(2, final + 1)), "a log entry no response acknowledged"

    # the decisions agree with the final state
    for uid in UIDS:
        answer = srv.authorize(uid, "sendMessage", guid=GUID, context={"messageType": "text"})
        if uid in banned:
            assert (answer["allowed"], answer["code"]) == (False, "ERR_BANNED_GROUPMEMBER"), answer
        elif uid in members:
            assert (answer["allowed"], answer["scope"]) == (True, members[uid]), answer
        else:
            assert (answer["allowed"], answer["code"]) == (False, "ERR_GROUP_NOT_JOINED"), answer
        assert answer["revision"] == final


def test_concurrent_requests_reach_both_workers(two_workers: Server) -> None:
    """The test above is only meaningful if both worker processes served requests."""
    workers = set()
    for _ in range(200):
        answer = two_workers.authorize("cc-probe", "sendMessage", context={"messageType": "text"})
        workers.add(answer["decisionId"].rpartition("-")[0])
        if len(workers) == 2:
            break
    assert len(workers) == 2, workers
