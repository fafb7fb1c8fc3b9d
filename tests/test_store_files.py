"""The embedded store's file deleted, replaced or moved under a running 2-worker server.

Every write after that is a 503 ERR_STORE_REPLACED (none is acknowledged into a file nobody
will open again), /health/ready is 503 and names it, decisions go on from the state in memory,
and every write acknowledged before is in the original file once it is put back.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import PROJECT_DIR, Server, unique

DB = "chatauthz.sqlite3"
WRITES_AFTER = 40  # each on a new connection, so both workers take some


def acknowledged_users(srv: Server, count: int) -> tuple[list[str], int]:
    uids = [unique("restricted") for _ in range(count)]
    revision = 0
    for uid in uids:
        revision = srv.ok("PUT", f"/users/{uid}", {"role": "restricted"})["revision"]
    return uids, revision


def workers_of(srv: Server) -> list[int]:
    """The pids of the server's worker processes (children of its master)."""
    assert srv.proc is not None
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == srv.proc.pid:
                pids.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            pass
    return pids


def wait_for_workers(srv: Server, count: int) -> None:
    """Until `count` workers have each answered a decision (decisionId: "<worker>-<n>"), bounded."""
    seen: set[str] = set()
    for _ in range(400):
        seen.add(srv.authorize("nobody", "createGroup")["decisionId"].rpartition("-")[0])
        if len(seen) >= count:
            return
    pytest.fail(f"only {len(seen)} of {count} workers answered")


def respawn_a_worker(srv: Server) -> None:
    """SIGKILL one worker; the server starts another on the data folder as it is now."""
    before = workers_of(srv)
    os.kill(before[0], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and before[0] in workers_of(srv):
        time.sleep(0.05)
    time.sleep(2.0)  # the new worker has had time to open the store (or to refuse to)


def foreign_database(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript("CREATE TABLE other (x INTEGER); INSERT INTO other VALUES (42);")
    conn.close()


@pytest.mark.parametrize("how", ["delete", "replace", "move-folder"])
def test_store_file_gone_refuses_writes(start_server: Any, tmp_path: Path, how: str) -> None:
    srv: Server = start_server(workers=2)
    wait_for_workers(srv, 2)
    db = srv.data_dir / DB
    uids, last = acknowledged_users(srv, 10)
    kept = tmp_path / "kept.sqlite3"  # the original file, as an operator's backup would hold it
    moved = srv.data_dir.with_name("moved-data")
    if how == "delete":
        os.link(db, kept)
        db.unlink()
    elif how == "replace":
        os.link(db, kept)
        foreign_database(tmp_path / "foreign.sqlite3")
        os.replace(tmp_path / "foreign.sqlite3", db)
    else:
        srv.data_dir.rename(moved)
    respawn_a_worker(srv)  # a worker started now must not serve a new, empty store

    refused = []
    for _ in range(WRITES_AFTER):
        uid = unique("after")
        response = srv.put(f"/users/{uid}", {"role": "support"})
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "ERR_STORE_REPLACED", response.text
        refused.append(uid)
    for _ in range(10):
        ready = srv.get("/health/ready")
        assert ready.status_code == 503, ready.text
        reasons = " ".join(ready.json()["data"]["reasons"])
        assert DB in reasons and ("deleted" in reasons or "replaced" in reasons), reasons
    for uid in uids[:6]:  # decisions go on from the state in memory; the respawned worker has none
        decision = srv.authorize(uid, "joinGroup")
        assert decision["allowed"] is False, decision
        assert decision["role"] == "restricted" or decision["code"] == "ERR_STATE_NOT_LOADED", decision
    errors = [json.loads(line) for line in srv.stderr().splitlines() if line.startswith("{")]
    assert any(e["level"] == "ERROR" and DB in e["message"] for e in errors), srv.stderr()

    srv.stop()
    if how == "move-folder":
        moved.rename(srv.data_dir)
    else:
        if how == "replace":
            foreign = sqlite3.connect(f"file:{db}?mode=ro&immutable=1", uri=True)
            assert foreign.execute("SELECT x FROM other").fetchall() == [(42,)]  # untouched
            foreign.close()
        os.replace(kept, db)
    srv.start()
    assert srv.revision() == last
    for uid in uids:
        assert srv.ok("GET", f"/users/{uid}")["data"]["role"] == "restricted"
    for uid in refused[:5]:  # and no refused write was kept
        assert srv.ok("GET", f"/users/{uid}")["data"]["role"] == "default"
    assert srv.authorize(uids[0], "joinGroup")["allowed"] is False


def test_file_replaced_inside_the_write_transaction_is_refused(tmp_path: Path) -> None:
    """The last look is taken inside the write transaction, just before COMMIT."""
    from sidecar.errors import StoreError
    from sidecar.stores.sqlite import SQLiteStore
    db, kept = tmp_path / DB, tmp_path / "kept.sqlite3"
    store = SQLiteStore(db)
    store.write(lambda: [{"op": "put_user", "uid": "before", "role": "restricted"}], "test")

    def replace_then_plan() -> list[dict[str, str]]:
        os.link(db, kept)
        foreign_database(tmp_path / "foreign.sqlite3")
        os.replace(tmp_path / "foreign.sqlite3", db)
        return [{"op": "put_user", "uid": "during", "role": "support"}]
    with pytest.raises(StoreError) as refused:
        store.write(replace_then_plan, "test")
    assert refused.value.code == "ERR_STORE_REPLACED" and refused.value.status == 503
    with pytest.raises(StoreError):
        store.write(lambda: [{"op": "put_user", "uid": "after", "role": "support"}], "test")
    with pytest.raises(StoreError, match="replaced"):
        store.check()
    store.close()
    os.replace(kept, db)  # back beside its -wal, which SQLite keeps for a moved file
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT uid FROM users").fetchall() == [("before",)]
    conn.close()


def test_a_worker_that_notices_first_still_applies_what_others_committed_before(tmp_path: Path) -> None:
    """Noticing the loss must not freeze a worker short of a write another worker had acknowledged
    into the original file: it still catches up from the original, through its open connection."""
    from sidecar.core import Sidecar
    from sidecar.policy import load_policy
    from sidecar.stores.sqlite import SQLiteStore
    policy = load_policy(PROJECT_DIR / "policies")
    db = tmp_path / DB
    one, two = Sidecar(policy, SQLiteStore(db)), Sidecar(policy, SQLiteStore(db))
    revision = two.write(lambda tx: ([{"op": "put_user", "uid": "u1", "role": "restricted"}], None), "worker-2").revision
    db.unlink()
    ready = one.store.check  # type: ignore[attr-defined]
    with pytest.raises(Exception, match="deleted"):
        ready()  # readiness in worker one notices first
    one.refresh()
    assert one.state.revision == revision and one.state.users == {"u1": "restricted"}
    one.store.close()
    two.store.close()
