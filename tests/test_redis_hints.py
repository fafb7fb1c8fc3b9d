"""A follower applies the journal entry a pub/sub hint carries without reading the stream
(sidecar.sync, RedisStore.changes_since on hints), and falls back to the stream whenever the
hints are not the journal's next entries: another epoch, a gap, an entry too long to ride on its
hint. In-process Sidecars on a real redis-server; the followers' periodic check is set far off
(30 s), so a read of the stream here comes from a hint that could not be used."""
from __future__ import annotations

import ast
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis_support import RedisServer, unique, wait_until

from sidecar import management as m
from sidecar.core import Sidecar
from sidecar.policy import load_policy
from sidecar.stores import redisstore
from sidecar.stores.redisstore import RedisStore
from tests.op_script import fields

REPO = Path(__file__).resolve().parents[1]
POLICY = load_policy(REPO / "policies")


class CountingStore(RedisStore):
    """Counts the reads of the journal stream (changes_since that went to Redis)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stream_reads = 0
        self._hinted_answer = False

    def _from_hints(self, revision: int, newest: int) -> Any:
        found = super()._from_hints(revision, newest)
        self._hinted_answer = bool(found)
        return found

    def changes_since(self, revision: int, *, remembered: bool = True) -> Any:
        self._hinted_answer = False
        found = super().changes_since(revision, remembered=remembered)
        if not self._hinted_answer:
            self.stream_reads += 1
        return found


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


def test_hints_carry_the_entries_and_the_stream_is_not_read(pair: Callable[[], tuple[Sidecar, Sidecar]]) -> None:
    writer, follower = pair()
    store: CountingStore = follower.store  # type: ignore[assignment]
    reads = store.stream_reads
    last = roles(writer, 40)
    wait_until(lambda: follower.state.revision >= last, 10, what="the follower reached the last write")
    assert store.stream_reads == reads, f"{store.stream_reads - reads} stream reads for 40 hinted writes"
    assert fields(follower.state) == fields(writer.store.load())


def test_an_entry_too_long_for_its_hint_is_read_from_the_stream(pair: Callable[[], tuple[Sidecar, Sidecar]]) -> None:
    writer, follower = pair()
    store: CountingStore = follower.store  # type: ignore[assignment]
    reads = store.stream_reads
    last = writer.write(lambda tx: m.plan_set_role_permissions(tx, "support", {"sendMessage": "allow"}), "t").revision
    wait_until(lambda: follower.state.revision >= last, 10, what="the follower applied a hinted write")
    assert store.stream_reads == reads
    uid = "x" * (redisstore.HINT_ENTRY_MAX + 1)
    big = writer.write(lambda tx: ([{"op": "put_user", "uid": uid, "role": "support"}], None), "t").revision
    wait_until(lambda: follower.state.revision >= big, 10, what="the follower read the long entry from the stream")
    assert store.stream_reads == reads + 1
    assert fields(follower.state) == fields(writer.store.load())


def test_hints_of_another_epoch_or_after_a_gap_are_not_applied(pair: Callable[[], tuple[Sidecar, Sidecar]]) -> None:
    """changes_since on hints, called as the sync thread calls it: an offered entry of another
    epoch, or one whose predecessor was never offered (a lost hint), is not applied: the stream is read."""
    writer, follower = pair()
    store: CountingStore = follower.store  # type: ignore[assignment]
    at = follower.state.revision
    forged = '{"at":0,"actor":"x","ops":[{"op":"put_user","uid":"forged","role":"support"}]}'
    follower.stop()  # this test calls changes_since itself
    last = roles(writer, 1, uid="real")
    assert last == at + 1
    real = writer.store.changes_since(at)
    assert [op["uid"] for _, ops in real for op in ops] == ["real0"]
    store._offer("another-epoch", at + 1, forged)  # a hint from another history
    with store._on_hints(at + 1):
        assert store.changes_since(at) == real
    store._offer(str(store.epoch), at + 2, forged)  # the next one, its predecessor never offered
    with store._on_hints(at + 2):
        assert store.changes_since(at) == real
    assert store.stream_reads >= 2
