"""`chatauthz import FILE|-`: NDJSON into the embedded store or Redis, as the API would write it.

- the store ends up holding exactly what the same writes through the API's plans give, in one
  revision per batch, and a second import of the same file writes nothing;
- every bad line is reported as FILE:LINE: message (the API's own message), exit 3, and nothing
  of the file is written unless --partial (then the good lines are);
- stdin, Redis (a real redis-server), and a store that changed under the import (refused).
"""
from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.cli import main
from sidecar.commands.importer import commit, planned_batches, write_spooled
from sidecar.errors import ConflictError
from sidecar.importing import (
    BAN,
    GROUP,
    MEMBER,
    NOTHING,
    OPS_PER_CODE,
    PUT_BAN,
    PUT_GROUP,
    PUT_GROUP_ADMIN,
    PUT_MEMBER,
    PUT_USER,
    USER,
    Block,
    planned_runs,
)
from sidecar.stores.base import ops_of_runs
from sidecar.stores.redisstore import RedisStore
from sidecar.stores.sqlite import SQLiteStore
from tests.op_script import fields
from tests.redis_support import RedisServer

pytestmark = pytest.mark.integration
REDIS = pytest.mark.redis
GOOD: list[dict[str, Any]] = [
    {"user": "Ann", "role": "support"}, {"user": "bob", "role": "restricted"},
    {"group": "g1", "owner": "ann"}, {"member": "bob", "group": "g1", "scope": "moderator"},
    {"member": "cid", "group": "g1", "scope": "participant"}, {"ban": "dan", "group": "g1"},
    {"group": "g2", "owner": "bob"}, {"member": "ann", "group": "g2", "scope": "admin"},
    {"member": "cid", "group": "g1", "scope": "participant"},  # already so: nothing to write
    {"ban": "cid", "group": "g2"}, {"user": "eve", "role": "default"},
]


def write_file(path: Path, records: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["import", *args])
    out, err = capsys.readouterr()
    return code, out, err


def sqlite_state(data: Path) -> Any:
    store = SQLiteStore(data / "chatauthz.sqlite3")
    try:
        return store.load()
    finally:
        store.close()


def test_a_file_lands_as_the_api_would_write_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    code, out, err = run(capsys, str(write_file(tmp_path / "a.ndjson", GOOD)), "--data-dir", str(data),
                         "--batch-size", "3")
    assert code == 0, err
    state = sqlite_state(data)
    assert state.users == {"ann": "support", "bob": "restricted"}  # eve holds default: nothing stored
    assert state.owners == {"g1": "ann", "g2": "bob"}
    assert state.members == {"g1": {"ann": "admin", "bob": "moderator", "cid": "participant"},
                             "g2": {"bob": "admin", "ann": "admin"}}
    assert state.bans == {"g1": {"dan"}, "g2": {"cid"}}
    assert "imported 11 record(s)" in out and f"in {state.revision} revision(s)" in out
    assert state.revision >= 3  # batches of about 3 ops, a record never split
    store = SQLiteStore(data / "chatauthz.sqlite3")
    try:
        journal = store.changes_since(0)
        assert [revision for revision, _ in journal] == list(range(1, state.revision + 1))
        total, entries = store.journal(0, 0, 100)
        assert {entry["actor"] for entry in entries} == {"import"}
    finally:
        store.close()
    # the same file again: everything is already so
    code, out, _ = run(capsys, str(tmp_path / "a.ndjson"), "--data-dir", str(data))
    assert code == 0 and "nothing to write" in out
    assert sqlite_state(data).revision == state.revision


BAD = [
    ("{not json", "The request is invalid: body: The request body is not valid JSON."),
    ({"user": "x", "role": "support", "extra": 1}, "Unknown field(s): extra."),
    ({"user": "no way", "role": "support"}, "The request is invalid: user: The user may only contain letters, "
                                            "numbers, dashes and underscores, and be at most 100 characters."),
    ({"user": "x", "role": "nosuchrole"}, "The role nosuchrole does not exist, please make sure you have created "
                                          "a role with role id nosuchrole."),
    ({"member": "x", "group": "nogroup", "scope": "participant"},
     "The group nogroup does not exist; create it with PUT /groups/nogroup."),
    ({"member": "x", "group": "g1", "scope": "owner"},
     "The request is invalid: scope: The scope must be one of admin, moderator, participant."),
    ({"member": "ann", "group": "g1", "scope": "participant"}, "ann owns group g1 and stays admin; transfer "
                                                               "ownership first."),
    ({"ban": "ann", "group": "g1"}, "ann owns group g1 and cannot be banned."),
    ({"member": "dan", "group": "g1", "scope": "participant"}, "dan is banned from group g1; unban them first."),
    ({"uid": "x"}, "The request is invalid: line: A record names one of user, group, member or ban."),
    ('{"user": "x", "user": "y", "role": "support"}', "The request is invalid: body: The key 'user' appears twice "
                                                       "in one object; duplicate keys are refused (parsers disagree "
                                                       "on which one wins)."),
    ("[1]", "The request is invalid: line: The request body must be a JSON object."),
]


def test_bad_lines_are_named_and_nothing_is_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    records: list[Any] = [*GOOD[:6], *[line for line, _ in BAD]]
    path = write_file(tmp_path / "bad.ndjson", records)
    code, out, err = run(capsys, str(path), "--data-dir", str(data))
    assert code == 3
    expected = [f"{path}:{6 + n}: {message}" for n, (_, message) in enumerate(BAD, start=1)]
    assert err.splitlines()[:len(BAD)] == expected
    assert "nothing was written" in err and out == ""
    assert sqlite_state(data).revision == 0

    code, out, err = run(capsys, str(path), "--data-dir", str(data), "--partial")
    assert code == 3 and err.splitlines()[:len(BAD)] == expected
    state = sqlite_state(data)
    assert state.owners == {"g1": "ann"} and state.bans == {"g1": {"dan"}} and "imported 6 record(s)" in out


@REDIS
def test_stdin_and_redis(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_file(tmp_path / "a.ndjson", GOOD)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(path.read_bytes())))
    code, _, err = run(capsys, "-", "--data-dir", str(tmp_path / "data"))
    assert code == 0, err
    expected = sqlite_state(tmp_path / "data")
    redis_server = RedisServer(tmp_path / "redis").start()
    try:
        code, out, err = run(capsys, str(path), "--redis-url", redis_server.url)
        assert code == 0, err
        store = RedisStore(redis_server.url, "chatauthz:", 1.0)
        try:
            loaded = store.load()
        finally:
            store.close()
    finally:
        redis_server.stop()
    assert {k: v for k, v in fields(loaded).items() if k != "revision"} == \
        {k: v for k, v in fields(expected).items() if k != "revision"}


def test_a_store_that_changed_under_the_import_is_not_written(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    try:
        store.write(lambda: [{"op": "put_user", "uid": "late", "role": "support"}], "someone")
        batches: Any = [([("put_user", [("u1", "support")])], 1)]  # (runs, ops): one put_user
        with pytest.raises(ConflictError, match="the store changed while the file was imported"):
            commit(store, batches, read_at=0)  # it read the store at revision 0
        assert store.load().users == {"late": "support"}
        assert commit(store, batches, read_at=1) == [2]
    finally:
        store.close()


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("redis", marks=REDIS)])
def test_one_bad_line_at_the_end_of_a_big_file_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             kind: str) -> None:
    """60,000 good lines (dozens of batches of 2,000 ops) and one bad line last: not one batch
    is written; with --partial all the good lines are, and the batches never split a record."""
    records: list[Any] = [{"group": f"g{g}", "owner": f"o{g}"} for g in range(5_000)]
    records += [{"member": f"m{i}", "group": f"g{i % 5_000}", "scope": "participant"} for i in range(55_000)]
    records.append({"member": "late", "group": "nosuchgroup", "scope": "participant"})
    path = write_file(tmp_path / "big.ndjson", records)
    server = RedisServer(tmp_path / "redis").start() if kind == "redis" else None
    where = ["--redis-url", server.url] if server is not None else ["--data-dir", str(tmp_path / "data")]

    def load() -> Any:
        store: Any = RedisStore(server.url, "chatauthz:", 5.0) if server is not None else \
            SQLiteStore(tmp_path / "data" / "chatauthz.sqlite3")
        try:
            return store.load(), store.changes_since(0)
        finally:
            store.close()
    try:
        code, out, err = run(capsys, str(path), *where, "--batch-size", "2000")
        assert code == 3 and f"{path}:60001: The group nosuchgroup does not exist" in err and out == ""
        state, journal = load()
        assert state.revision == 0 and state.members == {} and state.owners == {} and journal == []

        code, out, err = run(capsys, str(path), *where, "--batch-size", "2000", "--partial")
        assert code == 3 and "imported 60000 record(s)" in out
        state, journal = load()
        assert len(state.owners) == 5_000 and sum(map(len, state.members.values())) == 60_000
        assert state.revision == len(journal) > 25
        for _, ops in journal:  # a new group's put_group and its owner's admin put_member: one batch
            assert ops[-1]["op"] != "put_group" and not (ops[0]["op"] == "put_member" and ops[0]["scope"] == "admin")
    finally:
        if server is not None:
            server.stop()


def block_of(number: int, kinds: list[int]) -> Block:
    """A block of these kinds of records, ids made up from the block's number and the position."""
    return Block(0, kinds, [f"x{number}-{i}" for i in range(len(kinds))], [f"y{number}-{i}" for i in range(len(kinds))],
                 ["moderator" for kind in kinds if kind == MEMBER], None, [])


KIND_CODES = [(MEMBER, PUT_MEMBER), (USER, PUT_USER), (GROUP, PUT_GROUP), (GROUP, PUT_GROUP_ADMIN), (BAN, PUT_BAN)]
spool_blocks = st.lists(st.lists(st.tuples(st.sampled_from(KIND_CODES), st.booleans()), min_size=1, max_size=40).map(
    lambda records: ([kind for (kind, _), _ in records], [code if planned else NOTHING for (_, code), planned in records])),
    max_size=6).map(lambda blocks: [(kinds, codes) for kinds, codes in blocks if any(codes)])  # as check_file spools


@settings(max_examples=200, deadline=None)
@given(spool_blocks, st.integers(min_value=1, max_value=50))
def test_batches_are_cut_at_the_size_between_records(blocks: list[tuple[list[int], list[int]]], size: int) -> None:
    """planned_batches: every op of the spool once, in order, batches of `size` ops (one more
    where the cut would fall between a new group's two ops), never a record split."""
    spool = io.BytesIO()
    whole: list[Any] = []
    starts = {0}  # where the ops of a record start in `whole`
    for number, (kinds, codes) in enumerate(blocks):
        write_spooled(spool, block_of(number, kinds), bytes(codes), {"moderator": "moderator"})
        whole += ops_of_runs(planned_runs(block_of(number, kinds), bytes(codes)))
        for code in codes:
            starts.add(max(starts) + OPS_PER_CODE[code])
    spool.seek(0)
    batches = list(planned_batches(spool, size))
    assert [op for runs, _ in batches for op in ops_of_runs(runs)] == whole
    at = 0
    for number, (runs, count) in enumerate(batches):
        assert count == len(ops_of_runs(runs)) > 0 and (count in (size, size + 1) or number == len(batches) - 1)
        at += count
        assert at in starts


def test_a_write_that_fails_midway_stops_the_import_and_says_what_was_written(tmp_path: Path) -> None:
    """The batches are written behind the spool's reading (a thread): a store that changes between
    two of them stops the import at once, naming the revisions already written; nothing after."""
    store = SQLiteStore(tmp_path / "s.db")
    other = SQLiteStore(tmp_path / "s.db")
    store.bulk_call_ops = 1  # type: ignore[misc]  # each batch its own transaction

    def batches() -> Any:
        yield [("put_user", [("u1", "support")])], 1
        for _ in range(500):  # until the first is written
            if other.load().revision == 1:
                break
            time.sleep(0.01)
        other.write(lambda: [{"op": "put_user", "uid": "late", "role": "support"}], "someone")
        yield [("put_user", [("u2", "support")])], 1
        yield [("put_user", [("u3", "support")])], 1
    try:
        with pytest.raises(ConflictError, match=r"; this import wrote revisions 1..1 before it stopped"):
            commit(store, batches(), read_at=0)
        assert other.load().users == {"u1": "support", "late": "support"}
    finally:
        store.close()
        other.close()
