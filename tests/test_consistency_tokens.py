"""Consistency tokens "<epoch>:<revision>" on the embedded store (the same format as Redis's).

Writes and decisions answer a token; its epoch is fixed per database file (made when the file is
created) and survives a reopen. atLeastRevision takes the token or, as before, a bare revision
(meaning the current epoch). A token of another epoch is never satisfied: 409
ERR_REVISION_EPOCH_MISMATCH at once. A malformed one is a 400 naming the field.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from sidecar.api import create_app
from sidecar.compose import build_sidecar
from sidecar.config import Settings
from sidecar.stores.sqlite import SQLiteStore

KEY = "test-token-key-0123456789"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[FlaskClient]:
    settings = Settings(data_dir=tmp_path, api_key=KEY, policy_watch_s=0, revision_wait_s=0.2)
    core = build_sidecar(settings, start_threads=False)
    try:
        yield create_app(settings, sidecar=core).test_client()
    finally:
        core.store.close()


def call(client: FlaskClient, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    response = client.open(path, method=method, json=body, headers={"apikey": KEY})
    return response.status_code, response.get_json()


def test_writes_and_decisions_answer_a_token_of_the_files_epoch(client: FlaskClient, tmp_path: Path) -> None:
    tokens = [call(client, "PUT", f"/users/u{n}", {"role": "support"})[1]["token"] for n in range(3)]
    epoch = tokens[0].split(":")[0]
    assert tokens == [f"{epoch}:1", f"{epoch}:2", f"{epoch}:3"]
    status, decision = call(client, "POST", "/authorize", {"uid": "u1", "action": "createGroup"})
    assert status == 200 and decision["data"]["token"] == f"{epoch}:3"
    assert call(client, "GET", "/health/ready")[1]["data"]["token"] == f"{epoch}:3"
    reopened = SQLiteStore(tmp_path / "chatauthz.sqlite3")
    other = SQLiteStore(tmp_path / "other.sqlite3")
    try:
        assert reopened.load().epoch == epoch, "the epoch is fixed per file"
        assert other.load().epoch not in ("", epoch)
    finally:
        reopened.close()
        other.close()


def test_at_least_revision_takes_a_token_or_a_revision(client: FlaskClient) -> None:
    written = call(client, "PUT", "/users/alice", {"role": "support"})[1]
    epoch, revision = written["token"].split(":")
    check = {"uid": "alice", "action": "createGroup"}
    for wanted in (written["token"], int(revision)):
        status, body = call(client, "POST", "/authorize", {**check, "atLeastRevision": wanted})
        assert status == 200 and body["data"]["allowed"] is False, body
    status, body = call(client, "POST", "/authorize", {**check, "atLeastRevision": f"{epoch}:{int(revision) + 1}"})
    assert status == 503 and body["error"]["code"] == "ERR_REVISION_NOT_REACHED", body
    # another epoch: never satisfied, whatever its number, and refused without waiting
    for other in ("0123456789abcdef:1", f"{'f' * 32}:0"):
        started = time.monotonic()
        status, body = call(client, "POST", "/authorize", {**check, "atLeastRevision": other})
        assert status == 409 and body["error"]["code"] == "ERR_REVISION_EPOCH_MISMATCH", body
        assert time.monotonic() - started < 0.2
    status, body = call(client, "POST", "/authorize/batch", {"checks": [
        {**check, "atLeastRevision": "0123456789abcdef:1"}, {**check, "atLeastRevision": written["token"]}]})
    results = body["data"]["results"]
    assert results[0]["error"]["code"] == "ERR_REVISION_EPOCH_MISMATCH" and results[1]["allowed"] is False, results
    for bad in ("abc", f"{epoch}:", f":{revision}", f"{epoch}:{revision}\n", f" {epoch}:{revision}", f"{epoch}:-1", f"{epoch.upper()}:1", f"{epoch}:1:2", 1.5,
                True, -1, f"{epoch}:{2**60}"):
        status, body = call(client, "POST", "/authorize", {**check, "atLeastRevision": bad})
        assert status == 400 and "atLeastRevision" in body["error"]["details"], (bad, body)
