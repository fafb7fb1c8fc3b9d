"""The working set (`--cache-entries`): a sidecar that holds the entities as a bounded cache
decides, writes and answers list questions exactly as one that holds the whole state.

Differential over random worlds (tests/test_differential_authorize_write.py's generator): two
sidecars on one embedded store, one whole, one with a cache far smaller than the world (so
facts are evicted and read again all the time); random writes go through either; after each,
decisions, capabilities and list answers of the two must be equal. Plus the cache's own rules:
the bound holds, negative answers are cached, a read older than the state is brought up to date
by the ops since, and start-up reads no entity.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from sidecar.core import Sidecar
from sidecar.engine import AuthzRequest
from sidecar.errors import ChatAuthzError
from sidecar.state import Op, RuntimeState
from sidecar.stores.base import Facts
from sidecar.stores.sqlite import SQLiteStore
from sidecar.workingset import WorkingSet
from tests.test_differential_authorize_write import POLICY, Case, random_case, run_write, world_ops

ACTIONS = ("sendMessage", "editGroup", "kickMembers", "ban", "changeScope", "getGroupDetails", "joinGroup",
           "leaveGroup", "addMembers", "createGroup", "transferOwnership", "deleteGroup", "unban")


def comparable(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in ("decisionId",)}


def answer(call: Any, *args: Any) -> Any:
    try:
        return call(*args)
    except ChatAuthzError as exc:
        return ("error", exc.code, exc.message)


def write_case(sidecar: Sidecar, case: Case, owner: str | None) -> Any:
    if case.operation == "update":  # the same plan as a transfer to the current owner
        case = Case("transfer", case.actor, case.guid, owner or case.actor)

    def plan(tx: Any) -> tuple[list[Op], str | None]:
        ops, code = run_write(tx.engine, tx.state, case)
        return ops or [], code
    return answer(lambda: sidecar.write(plan, case.actor).result)


def probes(rng: random.Random, uids: list[str], guids: list[str]) -> list[AuthzRequest]:
    found = []
    for _ in range(12):
        action = rng.choice(ACTIONS)
        uid, guid = rng.choice(uids), rng.choice(guids)
        target = rng.choice(uids) if action in ("kickMembers", "ban", "changeScope", "transferOwnership",
                                                "addMembers", "unban") else None
        context = {"newScope": rng.choice(("admin", "moderator", "participant"))} \
            if action in ("changeScope", "addMembers") else {}
        found.append(AuthzRequest(uid, action, guid, target, context))
    return found


@pytest.mark.parametrize("seed", range(6))
def test_a_working_set_decides_writes_and_lists_as_the_whole_state(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    path = tmp_path / "db.sqlite3"
    ops, uids, guids = world_ops(rng)
    SQLiteStore(path).write(lambda: ops, "seed")
    whole = Sidecar(POLICY, SQLiteStore(path))
    working = Sidecar(POLICY, SQLiteStore(path), cache_entries=rng.choice((2, 6, 20, 60)))
    assert isinstance(working.state, WorkingSet) and working.state.size == 0  # start-up read no entity
    compared = allowed = 0
    for _step in range(40):
        whole.refresh()
        full = whole.state
        case = random_case(rng, full, uids, guids)
        through = rng.choice((whole, working))
        written = write_case(through, case, full.owners.get(case.guid))
        for sidecar in (whole, working):
            sidecar.refresh()
        assert working.state.revision == whole.state.revision, written
        for request in probes(rng, uids, guids):
            a = answer(lambda sidecar: comparable(sidecar.decide(request)), whole)  # noqa: B023 (called here)
            b = answer(lambda sidecar: comparable(sidecar.decide(request)), working)  # noqa: B023
            assert a == b, (request, a, b)
            compared += 1
            allowed += isinstance(a, dict) and a["allowed"]
        uid, guid = rng.choice(uids), rng.choice(guids)
        assert answer(whole.capabilities, uid, guid) == answer(working.capabilities, uid, guid)
        action = rng.choice(("sendMessage", "kickMembers", "getGroupDetails", "leaveGroup"))
        assert answer(whole.groups_where, uid, action) == answer(working.groups_where, uid, action)
        target = uid if action == "kickMembers" else None
        assert answer(whole.members_who, guid, action, target) == answer(working.members_who, guid, action, target)
        assert working.state.size <= working.state.capacity + 2 * 40  # plus what one answer reads
    assert compared == 40 * 12 and allowed > 20, allowed
    assert working.facts_read > 0


def test_the_bound_holds_and_negative_answers_are_cached(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    store = SQLiteStore(path)
    store.write(lambda: [{"op": "put_user", "uid": "alice", "role": "support"},
                         {"op": "put_group", "guid": "g", "owner": "alice"},
                         {"op": "put_member", "guid": "g", "uid": "alice", "scope": "admin"}], "seed")
    sidecar = Sidecar(POLICY, SQLiteStore(path), cache_entries=100)
    body = sidecar.decide(AuthzRequest("ghost", "sendMessage", "g"))
    assert (body["allowed"], body["code"]) == (False, "ERR_GROUP_NOT_JOINED")
    read = sidecar.facts_read
    assert sidecar.decide(AuthzRequest("ghost", "sendMessage", "g"))["code"] == "ERR_GROUP_NOT_JOINED"
    assert sidecar.facts_read == read  # "not a member" and "no role" were cached
    for i in range(2000):  # a flood of ids that do not exist
        assert not sidecar.decide(AuthzRequest(f"nobody-{i}", "sendMessage", f"nowhere-{i}"))["allowed"]
    state = sidecar.state
    assert isinstance(state, WorkingSet) and state.size <= 100
    assert sidecar.decide(AuthzRequest("alice", "sendMessage", "g"))["allowed"]


def test_a_read_older_than_the_state_is_brought_up_to_date(tmp_path: Path) -> None:
    """A fact read at revision R, absorbed after the state applied later ops on it, takes them."""
    path = tmp_path / "db.sqlite3"
    store = SQLiteStore(path)
    store.write(lambda: [{"op": "put_group", "guid": "g", "owner": "o"},
                         {"op": "put_member", "guid": "g", "uid": "m", "scope": "moderator"}], "seed")
    sidecar = Sidecar(POLICY, SQLiteStore(path), cache_entries=100)
    facts = Facts(["m"], ["g"], [("g", "m")])
    old = store.read_facts(facts)  # at revision 1: m is a moderator
    store.write(lambda: [{"op": "ban", "guid": "g", "uid": "m"}, {"op": "put_user", "uid": "m", "role": "support"}],
                "w")
    sidecar.refresh()  # the state applies revision 2 while holding nothing of m
    state = sidecar.state
    assert isinstance(state, WorkingSet) and state.revision == 2
    assert state.absorb(facts, old) == "ok"
    assert (state.scope_of("g", "m"), state.is_banned("g", "m"), state.role_of("m")) == (None, True, "support")
    ahead = Sidecar(POLICY, SQLiteStore(path), cache_entries=100).state
    store.write(lambda: [{"op": "unban", "guid": "g", "uid": "m"}], "w")
    assert isinstance(ahead, WorkingSet) and ahead.absorb(facts, store.read_facts(facts)) == "behind"


def test_a_working_set_holds_no_whole_table(tmp_path: Path) -> None:
    """Code that reads a whole entity table from a working set fails loudly, never answers empty."""
    state = Sidecar(POLICY, SQLiteStore(tmp_path / "db.sqlite3"), cache_entries=10).state
    for read in (lambda: state.users.get("u"), lambda: "g" in state.owners, lambda: len(state.members),
                 lambda: list(state.bans)):
        with pytest.raises(TypeError):
            read()
    assert isinstance(RuntimeState().whole, bool) and not state.whole


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.integration  # about 20 s
def test_a_million_checks_for_ids_that_do_not_exist_stay_within_the_bound(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    SQLiteStore(path).write(lambda: [{"op": "put_group", "guid": "g", "owner": "o"}], "seed")
    capacity = 20_000
    sidecar = Sidecar(POLICY, SQLiteStore(path), cache_entries=capacity)
    rng = random.Random(7)

    def flood(count: int) -> None:
        for batch in range(count // 2000):
            checks: list[Any] = []
            for n in range(2000):
                uid = f"ghost-{rng.getrandbits(48):012x}"
                request = AuthzRequest(uid, "sendMessage", f"nowhere-{batch}-{n % 7}") if n % 50 == 0 else \
                    AuthzRequest(uid, "createGroup")
                checks.append((request, None))
            for body in sidecar.decide_many(checks):
                assert isinstance(body, dict) and not (body["allowed"] and body["layer"] == "store"), body
    flood(60_000)  # the cache is full and the allocator has its pools
    before = rss_bytes()
    flood(1_000_000)
    grown = rss_bytes() - before
    state = sidecar.state
    assert isinstance(state, WorkingSet) and state.size <= capacity + 3 * 2000
    assert sidecar.facts_read >= 1_000_000  # every id was new: each was read, cached, evicted
    assert grown < 16 * 1024 * 1024, f"RSS grew {grown / 1e6:.1f} MB over a million ids that do not exist"
