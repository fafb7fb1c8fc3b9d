"""The working set on a real redis-server, with writes from several threads through several
sidecars: every decision a working-set sidecar gave equals the decision of a whole-state engine
at the same revision (the journal replayed up to it), and afterwards every sidecar agrees.

Four in-process sidecars (each its own RedisStore and sync follower) on one Redis: two whole,
two with a working set far smaller than the world. Three writer threads apply random group
operations through random sidecars while two reader threads ask the working sets random
questions; each answer is recorded with its revision and checked after the run.
"""
from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from sidecar.core import Sidecar
from sidecar.engine import AuthzRequest, Engine
from sidecar.errors import ChatAuthzError
from sidecar.state import RuntimeState
from sidecar.stores.redisstore import RedisStore
from sidecar.workingset import WorkingSet
from tests.redis_support import RedisServer, unique
from tests.test_differential_authorize_write import POLICY, random_case, world_ops
from tests.test_working_set import probes, write_case

WRITES_PER_THREAD = 120


def sidecar_on(server: RedisServer, prefix: str, cache_entries: int | None) -> Sidecar:
    sidecar = Sidecar(POLICY, RedisStore(server.url, prefix, timeout_s=2.0), cache_entries=cache_entries,
                      sync_interval_s=0.2)
    sidecar.start()
    return sidecar


def replayed(journal: list[tuple[int, list[Any]]], revision: int) -> RuntimeState:
    state = RuntimeState()
    for rev, ops in journal:
        if rev > revision:
            break
        state.apply_all(ops, rev)
    return state


@pytest.mark.parametrize("seed", range(2))
def test_every_working_set_decision_is_the_whole_states_at_its_revision(module_redis: RedisServer, seed: int) -> None:
    rng = random.Random(seed)
    prefix = unique("ws") + ":"
    ops, uids, guids = world_ops(rng)
    RedisStore(module_redis.url, prefix).write(lambda: ops, "seed")
    whole = [sidecar_on(module_redis, prefix, None) for _ in range(2)]
    working = [sidecar_on(module_redis, prefix, size) for size in (24, 60)]  # the world: ~50 facts
    everyone = whole + working
    shared = threading.RLock()  # one process, four sidecars: CPython 3.11's ast (under casbin's
    for sidecar in everyone:    # expressions) is not thread-safe, and a real process has one lock
        sidecar._lock = shared
    answers: list[tuple[AuthzRequest, dict[str, Any]]] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def writer(n: int) -> None:
        local = random.Random(seed * 100 + n)
        try:
            for _ in range(WRITES_PER_THREAD):
                state = whole[0].state
                with whole[0]._lock:
                    case = random_case(local, state, uids, guids)
                    owner = state.owners.get(case.guid)
                write_case(local.choice(everyone), case, owner)
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    def reader(n: int) -> None:
        local = random.Random(seed * 1000 + n)
        try:
            while not done.is_set():
                for request in probes(local, uids, guids):
                    sidecar = local.choice(working)
                    try:
                        answers.append((request, sidecar.decide(request)))
                    except ChatAuthzError:
                        pass  # a 400 for the request itself: the same on every state
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
    writers = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    readers = [threading.Thread(target=reader, args=(n,)) for n in range(2)]
    try:
        for thread in writers + readers:
            thread.start()
        for thread in writers:
            thread.join(timeout=120)
        done.set()
        for thread in readers:
            thread.join(timeout=30)
        assert not errors, errors
        store = RedisStore(module_redis.url, prefix)
        store.load()
        journal = store.changes_since(0)
        assert len(journal) >= 20, "too few writes were allowed to prove anything"
        engine = Engine(POLICY)
        states: dict[int, RuntimeState] = {}
        changed = 0
        for request, body in answers:
            state = states.get(body["revision"])
            if state is None:
                state = states[body["revision"]] = replayed(journal, body["revision"])
            expected = engine.decide(request, state)
            assert (body["allowed"], body.get("code"), body["reason"]) == \
                (expected.allowed, expected.code, expected.reason), (request, body["revision"], body["reason"])
        revisions = {body["revision"] for _, body in answers}
        changed = len(revisions)
        assert len(answers) > 200 and changed > 20, (len(answers), changed)
        # quiet again: all four at the last revision, deciding alike
        last = journal[-1][0]
        deadline = time.monotonic() + 10
        while any(s.state.revision < last for s in everyone) and time.monotonic() < deadline:
            time.sleep(0.05)
        final = replayed(journal, last)
        for request in probes(rng, uids, guids) * 3:
            expected = engine.decide(request, final)
            for sidecar in everyone:
                body = sidecar.decide(request)
                assert (body["allowed"], body.get("code")) == (expected.allowed, expected.code), request
        for sidecar in working:
            assert isinstance(sidecar.state, WorkingSet)
            assert sidecar.state.size <= sidecar.state.capacity + 100
    finally:
        for sidecar in everyone:
            sidecar.stop()
            sidecar.store.close()


def test_start_up_reads_no_entity_and_costs_the_same_at_any_size(module_redis: RedisServer, tmp_path: Path) -> None:
    """A working set starts from the policy part only: with 20,000 users and memberships in Redis
    it holds no fact until asked, and decides them right when asked."""
    prefix = unique("ws-size") + ":"
    store = RedisStore(module_redis.url, prefix)
    store.write(lambda: [{"op": "put_group", "guid": "big", "owner": "o"}], "seed")
    for start in range(0, 20_000, 5_000):
        store.write(lambda start=start: [op for i in range(start, start + 5_000) for op in (
            {"op": "put_user", "uid": f"u{i}", "role": "support"},
            {"op": "put_member", "guid": "big", "uid": f"u{i}", "scope": "participant"})], "seed")
    sidecar = Sidecar(POLICY, RedisStore(module_redis.url, prefix), cache_entries=1000)
    try:
        state = sidecar.state
        assert isinstance(state, WorkingSet) and state.size == 0 and state.revision == 5
        body = sidecar.decide(AuthzRequest("u12345", "sendMessage", "big",
                                           context={"messageType": "text", "receiverType": "group"}))
        assert body["allowed"] and body["role"] == "support" and body["scope"] == "participant", body
        assert sidecar.decide(AuthzRequest("nobody", "sendMessage", "big"))["code"] == "ERR_GROUP_NOT_JOINED"
        groups = sidecar.groups_where("u777", "sendMessage")
        assert [g["guid"] for g in groups["groups"]] == ["big"]
        assert len(sidecar.members_who("big", "leaveGroup")["members"]) == 100  # the first page
    finally:
        sidecar.store.close()
