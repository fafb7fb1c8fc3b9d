"""A pub/sub message is only a hint: whatever it says, a sidecar applies only what it reads from
Redis's journal. Anyone who may PUBLISH on the channel (another app on the same Redis, a
client with a narrower ACL) can send one, so a forged message, one of another epoch or one
that carries ops must never reach a decision. In-process Sidecars on a real redis-server; the
followers' periodic check is set far off (30 s), so what they do comes from the messages."""
from __future__ import annotations

import ast
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis_support import RedisServer, unique, wait_until

from sidecar import management as m
from sidecar.core import Sidecar
from sidecar.engine import AuthzRequest
from sidecar.policy import load_policy
from sidecar.stores.redisstore import RedisStore
from tests.op_script import fields

REPO = Path(__file__).resolve().parents[1]
POLICY = load_policy(REPO / "policies")


class CountingStore(RedisStore):
    """Counts the reads of the journal stream."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stream_reads = 0

    def changes_since(self, revision: int, *, remembered: bool = True) -> Any:
        self.stream_reads += 1
        return super().changes_since(revision, remembered=remembered)


@pytest.fixture
def pair(module_redis: RedisServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], tuple[Sidecar, Sidecar]]]:
    """pair() -> (writer, follower) on a fresh prefix, both started (as test_redis_writes, one
    lock around ast.parse: several Engines in one process)."""
    parse, parsing = ast.parse, threading.Lock()

    def locked_parse(*args: Any, **kwargs: Any) -> Any:
        with parsing:
            return parse(*args, **kwargs)
    monkeypatch.setattr(ast, "parse", locked_parse)
    made: list[Sidecar] = []

    def build() -> tuple[Sidecar, Sidecar]:
        prefix = unique("h") + ":"
        writer = Sidecar(POLICY, RedisStore(module_redis.url, prefix, timeout_s=2.0), sync_interval_s=30.0)
        follower = Sidecar(POLICY, CountingStore(module_redis.url, prefix, timeout_s=2.0), sync_interval_s=30.0)
        made.extend([writer, follower])
        for sidecar in (writer, follower):
            sidecar.start()
        assert follower.sync is not None
        wait_until(lambda: follower.sync is not None and follower.sync.status == "OK", 10, what="the follower subscribed")
        return writer, follower
    yield build
    for sidecar in made:
        sidecar.stop()
        sidecar.store.close()


def roles(writer: Sidecar, n: int, uid: str = "u") -> int:
    last = 0
    for i in range(n):
        role = ("support", "restricted")[i % 2]
        last = writer.write(lambda tx, i=i, role=role: m.plan_set_user_role(tx, f"{uid}{i % 7}", role), "t").revision
    return last


def test_a_forged_message_on_the_channel_changes_nothing_the_journal_does_not_say(
        module_redis: RedisServer, pair: Callable[[], tuple[Sidecar, Sidecar]]) -> None:
    writer, follower = pair()
    store: CountingStore = follower.store  # type: ignore[assignment]
    last = roles(writer, 3)
    wait_until(lambda: follower.state.revision >= last, 10, what="the follower reached the last write")
    epoch = str(follower.state.epoch)
    # "mallory is an admin of every group": the next revision, in this epoch, with ops after it
    entry = {"at": 0, "actor": "mallory", "ops": [{"op": "put_user", "uid": "mallory", "role": "support"},
                                                  {"op": "put_group", "guid": "g-forged", "owner": "mallory"}]}
    publisher = redis.Redis(port=module_redis.port, decode_responses=True)
    try:
        for forged in (json.dumps({"epoch": epoch, "revision": last + 1}) + "\n" + json.dumps(entry),
                       json.dumps({"epoch": epoch, "revision": last + 1, "ops": entry["ops"]}),
                       json.dumps({"epoch": "another", "revision": 1}) + "\n" + json.dumps(entry),
                       json.dumps(entry), "not json at all"):
            reads = store.stream_reads
            publisher.publish(follower.store.channel, forged)  # type: ignore[attr-defined]
            wait_until(lambda reads=reads: store.stream_reads > reads, 10, what="the follower read the journal")
            assert follower.state.revision == last and not follower.state.assigned("mallory"), forged
            decided = follower.decide(AuthzRequest("mallory", "deleteGroup", "g-forged"))
            assert decided["allowed"] is False and decided["code"] == "ERR_GUID_NOT_FOUND", forged
    finally:
        publisher.close()
    assert fields(follower.state) == fields(writer.store.load())
    # and the real writes after it still arrive, from the stream
    after = roles(writer, 2, uid="later")
    wait_until(lambda: follower.state.revision >= after, 10, what="the follower reached the later writes")
    assert fields(follower.state) == fields(writer.store.load())


def test_a_journal_entry_no_sidecar_wrote_is_never_half_applied(
        module_redis: RedisServer, pair: Callable[[], tuple[Sidecar, Sidecar]]) -> None:
    """Something else wrote the next revision into the journal: a valid op, then one no sidecar
    writes. The follower applies none of it and reloads from Redis's keys (which say nothing of
    "partial"); it never decides on the half."""
    writer, follower = pair()
    guid = unique("g")
    last = writer.write(lambda tx: ([{"op": "put_group", "guid": guid, "owner": "olivia"}], None), "t").revision
    wait_until(lambda: follower.state.revision >= last, 10, what="the follower reached the last write")
    store = writer.store
    entry = {"at": 0, "actor": "x", "ops": [{"op": "put_member", "guid": guid, "uid": "partial", "scope": "admin"},
                                          {"op": "no_such_op"}]}
    raw = redis.Redis(port=module_redis.port, decode_responses=True)
    try:
        revision = raw.incr(store.key("rev"))  # type: ignore[attr-defined]
        raw.xadd(store.key("journal"), {"entry": json.dumps(entry), "touched": "[]"},  # type: ignore[attr-defined]
                 id=f"{revision}-0")
        raw.publish(store.channel, json.dumps({"epoch": str(follower.state.epoch), "revision": revision}))  # type: ignore[attr-defined]
        wait_until(lambda: follower.state.revision >= revision, 10, what="the follower reloaded")
    finally:
        raw.close()
    assert follower.state.scope_of(guid, "partial") is None
    decided = follower.decide(AuthzRequest("partial", "kickMembers", guid, "olivia"))
    assert decided["allowed"] is False and decided["code"] == "ERR_GROUP_NOT_JOINED"
