"""Redis back from an older snapshot, on real processes (issue 10, item 7).

Two sidecars on one real redis-server with RDB persistence only (Redis's default: no AOF):
writes, `SAVE`, some hundreds more acknowledged writes (one of them a ban), `kill -9`, restart
from the snapshot. Redis is then below what both sidecars have seen. Each must treat that as a
data loss: readiness says so with the lost range, the sidecar with the highest revision writes
its state back under a new epoch (the other follows), no revision number of one epoch is issued
to two different writes, a token "<old epoch>:<revision>" is never satisfied again, and new
writes answer tokens of the new epoch.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis_support import RedisServer, SidecarProcess, start_all, unique, wait_until

from sidecar.stores.redisstore import RedisStore
from tests.http_client import check_body

GRACE_S = 3.0           # CHATAUTHZ_REDIS_RECOVERY_GRACE_S: claims are gathered this long
RECOVERY_BOUND_S = 20.0  # from the restart to every sidecar on the written-back state
WRITES_AFTER_SNAPSHOT = 300


@pytest.fixture
def rdb_cluster(tmp_path: Path) -> Iterator[tuple[RedisServer, redis.Redis, str, SidecarProcess, SidecarProcess]]:
    server = RedisServer(tmp_path)  # --appendonly no: only an explicit SAVE persists (an RDB file)
    prefix = "{" + unique("loss") + "}:"  # with its hash tag: prefix + name is the key
    env = {"CHATAUTHZ_REDIS_RECOVERY_GRACE_S": str(GRACE_S)}
    a = SidecarProcess(tmp_path, server.url, name="a", prefix=prefix, extra_env=env)
    b = SidecarProcess(tmp_path, server.url, name="b", prefix=prefix, extra_env=env)
    try:
        server.start()
        start_all([a, b])
        yield server, server.client(), prefix, a, b
    finally:
        for sidecar in (a, b):
            sidecar.stop()
        server.stop()


def parse(token: Any) -> tuple[str, int]:
    epoch, _, revision = str(token).rpartition(":")
    assert epoch and revision.isdigit(), token
    return epoch, int(revision)


def decide(sidecar: SidecarProcess, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    response = sidecar.post("/authorize", body, timeout=15)
    return response.status_code, response.json()


def test_redis_restarted_from_an_older_snapshot_is_detected_and_written_back(rdb_cluster: Any) -> None:
    server, admin, prefix, a, b = rdb_cluster
    group, banned, member = unique("g"), unique("banned"), unique("member")
    a.ok("PUT", f"/groups/{group}", {"owner": unique("owner")})
    b.ok("PUT", f"/groups/{group}/members/{banned}", {"scope": "participant"})
    a.ok("PUT", f"/groups/{group}/members/{member}", {"scope": "participant"})
    before = b.ok("PUT", f"/users/{unique('early')}", {"role": "support"})
    assert admin.save()
    snapshot_revision = int(admin.get(prefix + "rev"))
    old_epoch = admin.get(prefix + "epoch")
    assert before["revision"] == snapshot_revision

    # acknowledged writes after the snapshot: a ban (losing it is a wrong allow) and hundreds more
    acked: dict[int, tuple[str, str]] = {}  # revision -> (what, token)
    ban = a.ok("POST", f"/groups/{group}/bannedusers/{banned}")
    acked[ban["revision"]] = ("ban", str(ban.get("token")))
    uids = [unique("late") for _ in range(WRITES_AFTER_SNAPSHOT)]
    for n, uid in enumerate(uids):
        body = (a if n % 2 else b).ok("PUT", f"/users/{uid}", {"role": "support"})
        acked[body["revision"]] = (uid, str(body.get("token")))
    last = max(acked)
    assert sorted(acked) == list(range(snapshot_revision + 1, last + 1))
    for sidecar in (a, b):  # both sidecars have applied every acknowledged write
        wait_until(lambda s=sidecar: s.ready()[1]["revision"] == last, 5, 0.05, f"{sidecar.name} at {last}")

    server.kill()           # kill -9: the writes after SAVE were never persisted
    server.start()          # same folder: Redis loads the older dump.rdb
    assert int(admin.get(prefix + "rev")) == snapshot_revision, "the restart did not go back to the snapshot"

    # while the sidecars settle who writes back: not ready, and saying what was lost; no write lands
    lost_range = f"lost revisions {snapshot_revision + 1}..{last} of epoch {old_epoch}"
    code, ready = wait_until(lambda: (lambda r: r if r[0] == 503 and lost_range in str(r[1]) else None)(a.ready()),
                             10, 0.02, "a: 503 with the lost range while recovering")
    assert ready["status"] == "degraded" and ready["dataLoss"]["status"] == "pending", ready
    during = b.put(f"/users/{unique('during')}", json={"role": "support"}, timeout=15)
    if during.status_code != 503:  # only if the write-back finished first: then it is in the new epoch
        assert during.status_code == 200 and during.json()["revision"] > last, during.text
        assert parse(during.json()["token"])[0] != old_epoch, during.text
    head = last + (during.status_code == 200)  # Redis's revision once written back (and written to)

    # the highest revision (both hold `last`) is written back under a new epoch; both follow it
    def recovered() -> bool:
        epoch = admin.get(prefix + "epoch")
        return epoch != old_epoch and int(admin.get(prefix + "rev") or 0) == head and all(
            s.ready()[1].get("token") == f"{epoch}:{head}" for s in (a, b))
    wait_until(recovered, RECOVERY_BOUND_S, 0.1, "Redis written back and both sidecars on it")
    new_epoch = admin.get(prefix + "epoch")
    layout = RedisStore(server.url, prefix)  # only its key names: where each user's role lives
    assert all(admin.hget(*layout.user_field(u)) == "support" for u in uids), "acknowledged writes are still lost"
    layout.close()
    assert admin.sismember(prefix + f"bans:{group}", banned)
    for sidecar in (a, b):
        code, ready = sidecar.ready()
        assert code == 200 and ready["status"] == "degraded", (sidecar.name, ready)
        assert any(lost_range in reason for reason in ready["reasons"]), (sidecar.name, ready)
        loss = ready["dataLoss"]
        assert (loss["epoch"], loss["first"], loss["last"]) == (old_epoch, snapshot_revision + 1, last), loss
        assert (loss["newEpoch"], loss["restoredTo"]) == (new_epoch, last), loss
        status, body = decide(sidecar, check_body(banned, "sendMessage", group, context={"messageType": "text"}))
        assert status == 200 and body["data"]["allowed"] is False, (sidecar.name, body)
        assert body["data"]["code"] == "ERR_BANNED_GROUPMEMBER"
        assert parse(body["data"]["token"]) == (new_epoch, head)
    statuses = sorted(s.ready()[1]["dataLoss"]["status"] for s in (a, b))
    assert statuses == ["followed", "written"], statuses  # exactly one wrote back

    # new writes: the new epoch, revisions after everything the old epoch issued
    fresh: list[tuple[str, int]] = []
    for n in range(5):
        body = (a, b)[n % 2].ok("PUT", f"/users/{unique('new')}", {"role": "support"})
        fresh.append(parse(body["token"]))
        assert body["revision"] == fresh[-1][1]
    assert [epoch for epoch, _ in fresh] == [new_epoch] * 5
    assert [revision for _, revision in fresh] == list(range(head + 1, head + 6)), \
        "a revision number was issued again"
    # a new token is satisfied on the other sidecar at once
    status, body = decide(b, check_body(member, "sendMessage", group, atLeastRevision=f"{new_epoch}:{head + 5}"))
    assert status == 200 and body["data"]["allowed"] is True, body

    # old tokens are never satisfied: not the lost ones, not older ones, not ones whose number the
    # new epoch has passed (head + 1 .. head + 5 exist now in the new epoch: different writes)
    for token in [acked[snapshot_revision + 1][1], acked[last][1], f"{old_epoch}:{head + 3}",
                  f"{old_epoch}:{snapshot_revision}"]:
        for sidecar in (a, b):
            started = time.monotonic()
            status, body = decide(sidecar, check_body(member, "sendMessage", group, atLeastRevision=token))
            assert status == 409 and body["error"]["code"] == "ERR_REVISION_EPOCH_MISMATCH", (sidecar.name, token, body)
            assert time.monotonic() - started < 1.5, "an old epoch's token is refused at once, not waited for"
    # in a batch too, next to a check that is satisfied
    response = a.post("/authorize/batch", {"checks": [
        check_body(member, "sendMessage", group, atLeastRevision=acked[last][1]),
        check_body(member, "sendMessage", group, atLeastRevision=f"{new_epoch}:{head + 5}")]})
    results = response.json()["data"]["results"]
    assert results[0]["error"]["code"] == "ERR_REVISION_EPOCH_MISMATCH" and results[1]["allowed"] is True, results


def test_redis_and_both_sidecars_restarted_the_loss_is_still_seen_and_tokens_never_match(rdb_cluster: Any) -> None:
    """No running sidecar holds the lost writes: they cannot come back, but each sidecar
    remembers (in its data folder) the revision it had seen, so the loss is reported and the
    epoch changes: the lost writes' tokens are never met by the new writes that reuse the numbers."""
    server, admin, prefix, a, b = rdb_cluster
    a.ok("PUT", f"/users/{unique('early')}", {"role": "support"})
    assert admin.save()
    snapshot_revision, old_epoch = int(admin.get(prefix + "rev")), admin.get(prefix + "epoch")
    lost = [b.ok("PUT", f"/users/{unique('late')}", {"role": "support"}) for _ in range(20)]
    last = lost[-1]["revision"]
    wait_until(lambda: a.ready()[1]["revision"] == last, 5, 0.05, "a has seen every write")
    for process in (a, b, server):
        process.kill()
    server.start()
    start_all([a, b])
    assert int(admin.get(prefix + "rev")) == snapshot_revision

    def reported(sidecar: SidecarProcess) -> dict[str, Any] | None:
        code, ready = sidecar.ready()
        loss = ready.get("dataLoss")
        done = code == 200 and loss is not None and loss["status"] != "pending"
        return ready if done and ready["token"] == f"{admin.get(prefix + 'epoch')}:{snapshot_revision}" else None
    for sidecar in (a, b):
        ready = wait_until(lambda s=sidecar: reported(s), RECOVERY_BOUND_S, 0.1, f"{sidecar.name} reports the loss")
        loss = ready["dataLoss"]
        assert (loss["epoch"], loss["first"], loss["last"]) == (old_epoch, snapshot_revision + 1, last), loss
        assert loss["restoredTo"] == snapshot_revision and loss["newEpoch"] != old_epoch, loss
        assert ready["status"] == "degraded" and any("lost for good" in r for r in ready["reasons"]), ready
    new_epoch = admin.get(prefix + "epoch")
    assert new_epoch != old_epoch
    written = a.ok("PUT", f"/users/{unique('new')}", {"role": "support"})
    assert written["token"] == f"{new_epoch}:{snapshot_revision + 1}"  # the number again, in a new epoch
    for sidecar in (a, b):
        for token in (lost[0]["token"], lost[-1]["token"]):
            status, body = decide(sidecar, check_body("someone", "createGroup", atLeastRevision=token))
            assert status == 409 and body["error"]["code"] == "ERR_REVISION_EPOCH_MISMATCH", (sidecar.name, body)
