"""The seen record (redis-seen-*.json): the newest (epoch, revision) a sidecar was handed, on
disk before a write is answered, rewritten in place. No Redis is contacted (the client connects
lazily and nothing here reads)."""
from __future__ import annotations

import json
from pathlib import Path

from sidecar.stores.redisstore import RedisStore

URL = "redis://127.0.0.1:1/0"  # never reached


def store(folder: Path) -> RedisStore:
    return RedisStore(URL, "seen:", seen_dir=folder)


def test_two_workers_never_take_the_record_back(tmp_path: Path) -> None:
    one, two = store(tmp_path), store(tmp_path)
    one._saw("e1", 10)
    two._saw("e1", 5)  # behind the other worker: the file keeps 10
    assert store(tmp_path).seen == ("e1", 10)
    two._saw("e1", 12)
    assert store(tmp_path).seen == ("e1", 12)
    one._saw("e2", 3)  # a new epoch replaces the record, shorter or not
    assert store(tmp_path).seen == ("e2", 3)
    assert json.loads(one.seen_file.read_bytes()) == {"epoch": "e2", "revision": 3}  # type: ignore[union-attr]


def test_a_record_of_an_older_version_is_read_and_updated(tmp_path: Path) -> None:
    first = store(tmp_path)
    assert first.seen_file is not None
    first.seen_file.write_text(json.dumps({"epoch": "a-much-longer-epoch-name-than-the-next", "revision": 123456}))
    again = store(tmp_path)
    assert again.seen == ("a-much-longer-epoch-name-than-the-next", 123456)
    again._saw("b", 7)
    assert store(tmp_path).seen == ("b", 7)


def test_a_removed_record_is_made_again(tmp_path: Path) -> None:
    one = store(tmp_path)
    one._saw("e", 1)
    assert one.seen_file is not None
    one.seen_file.unlink()
    one._saw("e", 2)
    assert store(tmp_path).seen == ("e", 2)
