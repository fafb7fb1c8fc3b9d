"""Redis that fails over (issue 12, item 4), on real processes: a primary, its replica and three
sentinels (`down-after-milliseconds` 1000), sidecars started with `--redis-sentinel ...
--redis-service ...`, and a 3-node cluster-mode Redis with sidecars on `--redis-cluster`.

- The replica had every write: `kill -9` the primary; Sentinel promotes the replica, the
  sidecars follow, writes are refused and then accepted again within FAILOVER_BOUND_S (the
  figure is printed), no acknowledged write is lost and revisions continue in the same epoch.
- The replica lagged (SIGSTOP it, cut its link, write, kill the primary, SIGCONT it): the
  promoted replica is below what the sidecars saw in the same epoch; the epoch rule engages
  (writes fenced, the highest sidecar writes its state back under a new epoch) and every
  acknowledged write is back.
- With `--redis-min-replicas 1` a write the replica did not get is refused with
  503 ERR_WRITE_NOT_REPLICATED, never acknowledged; writes are accepted again once a replica
  is back (the old primary, restarted as a replica of the new one).
- On the cluster: two sidecars see each other's writes, and every key sits in one slot.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.crc import key_slot
from redis_support import ClusterSetup, RedisServer, SentinelSetup, SidecarProcess, start_all, unique, wait_until

from sidecar.stores.redisstore import bucket

FAILOVER_BOUND_S = 10.0  # the target: writes accepted again at most this long after the primary died
GRACE_S = 2.0  # CHATAUTHZ_REDIS_RECOVERY_GRACE_S
RECOVERY_BOUND_S = 30.0


def user_field(prefix: str, uid: str) -> tuple[str, str]:
    """Where the store keeps uid's role (its layout: the hash tag, the user's bucket)."""
    return "{" + prefix[:-1] + "}:users:" + bucket(uid), uid


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[SentinelSetup]:
    setup = SentinelSetup(tmp_path / "redis")
    try:
        yield setup.start()
    finally:
        setup.stop()


def sidecars_on(setup: SentinelSetup, base: Path, prefix: str, *, min_replicas: int = 0,
                names: tuple[str, ...] = ("a", "b")) -> list[SidecarProcess]:
    env = {"CHATAUTHZ_REDIS_RECOVERY_GRACE_S": str(GRACE_S)}
    return [SidecarProcess(base, None, name=name, prefix=prefix, extra_env=env,
                           redis_args=setup.redis_args(min_replicas)) for name in names]


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[SidecarProcess]]:
    """Sidecars a test starts (append them); all stopped at teardown."""
    sidecars: list[SidecarProcess] = []
    yield sidecars
    for sidecar in sidecars:
        sidecar.stop()


def put_user(sidecar: SidecarProcess, uid: str, role: str = "support", timeout: float = 15) -> Any:
    return sidecar.put(f"/users/{uid}", json={"role": role}, timeout=timeout)


def parse(token: Any) -> tuple[str, int]:
    epoch, _, revision = str(token).rpartition(":")
    assert epoch and revision.isdigit(), token
    return epoch, int(revision)


def role_of(sidecar: SidecarProcess, uid: str) -> Any:
    response = sidecar.get(f"/users/{uid}", timeout=5)
    return response.json()["data"]["role"] if response.status_code == 200 else None


def at_revision(sidecars: list[SidecarProcess], revision: int) -> None:
    for sidecar in sidecars:
        wait_until(lambda s=sidecar: s.ready()[1]["revision"] >= revision, 10, 0.05,
                   f"{sidecar.name} at revision {revision}")


def cut_replica_off(setup: SentinelSetup) -> tuple[RedisServer, RedisServer]:
    """SIGSTOP the replica, then close its link on the primary: what is written now stays on the
    primary alone (nothing sits in the replica's socket to be read after SIGCONT)."""
    primary, replica = setup.primary(), setup.replica()
    replica.pause()
    with redis.Redis(port=primary.port, socket_timeout=2) as admin:
        assert admin.client_kill_filter(_type="slave") >= 1
        assert wait_until(lambda: admin.info("replication")["connected_slaves"] == 0, 5, 0.02,
                          "the primary without a replica")
    return primary, replica


def test_failover_to_a_replica_that_had_everything(sentinel: SentinelSetup, tmp_path: Path,
                                                   started: list[SidecarProcess]) -> None:
    prefix = unique("fo") + ":"
    a, b = sidecars_on(sentinel, tmp_path, prefix)
    started += [a, b]
    start_all([a, b])
    acked: dict[str, int] = {}
    for n in range(20):
        uid = unique("before")
        acked[uid] = (a, b)[n % 2].ok("PUT", f"/users/{uid}", {"role": "support"})["revision"]
    last = max(acked.values())
    assert sorted(acked.values()) == list(range(1, last + 1))
    epoch = parse(a.ready()[1]["token"])[0]
    sentinel.wait_in_sync()  # the replica has everything
    old = sentinel.primary()

    old.kill()
    died = time.monotonic()
    refused = 0
    while True:
        response = put_user(a, probe := unique("probe"))
        if response.status_code == 200:
            break
        assert response.status_code == 503, response.text
        refused += 1
        assert time.monotonic() - died < 30, "writes were never accepted again"
        time.sleep(0.05)
    elapsed = time.monotonic() - died
    print(f"\nSentinel failover: writes refused ({refused} attempts) -> accepted again {elapsed:.2f}s after "
          f"the primary died (bound {FAILOVER_BOUND_S}s)")
    new = sentinel.wait_failover(old)
    assert new is not old and refused > 0, "the primary was not replaced"
    assert elapsed <= FAILOVER_BOUND_S, f"writes accepted again only {elapsed:.2f}s after the primary died"

    body = response.json()
    assert parse(body["token"]) == (epoch, last + 1), "revisions continue in the same epoch"
    acked[probe] = last + 1
    after = b.ok("PUT", f"/users/{unique('after')}", {"role": "restricted"})  # the other sidecar follows
    assert parse(after["token"]) == (epoch, last + 2)
    at_revision([a, b], last + 2)
    for sidecar in (a, b):
        code, ready = sidecar.ready()
        assert ready.get("dataLoss") is None, ready  # nothing was lost: no epoch change, no write-back
        assert all(role_of(sidecar, uid) == "support" for uid in acked), f"{sidecar.name} lost a write"
    with redis.Redis(port=new.port, decode_responses=True) as client:
        assert int(client.get("{" + prefix[:-1] + "}:rev") or 0) == last + 2
        assert all(client.hget(*user_field(prefix, uid)) == "support" for uid in acked)


def test_failover_to_a_replica_that_lagged_engages_the_epoch_rule(sentinel: SentinelSetup, tmp_path: Path,
                                                                  started: list[SidecarProcess]) -> None:
    prefix = unique("lag") + ":"
    a, b = sidecars_on(sentinel, tmp_path, prefix)
    started += [a, b]
    start_all([a, b])
    group, banned = unique("g"), unique("banned")
    a.ok("PUT", f"/groups/{group}", {"owner": unique("owner")})
    synced = b.ok("PUT", f"/groups/{group}/members/{banned}", {"scope": "participant"})["revision"]
    old_epoch = parse(a.ready()[1]["token"])[0]
    sentinel.wait_in_sync()

    primary, replica = cut_replica_off(sentinel)
    try:  # acknowledged on the primary alone (no WAIT): a ban, and users
        acked = [a.ok("POST", f"/groups/{group}/bannedusers/{banned}")["revision"]]
        uids = [unique("late") for _ in range(6)]
        for n, uid in enumerate(uids):
            acked.append((a, b)[n % 2].ok("PUT", f"/users/{uid}", {"role": "support"})["revision"])
        last = max(acked)
        assert acked == list(range(synced + 1, last + 1))
        at_revision([a, b], last)  # both sidecars applied every one
        primary.kill()
    finally:
        replica.resume()
    new = sentinel.wait_failover(primary)
    assert new is replica
    admin = new.client()
    assert int(admin.get("{" + prefix[:-1] + "}:rev") or 0) == synced, "the promoted replica had the late writes"

    def recovered() -> bool:
        epoch = admin.get("{" + prefix[:-1] + "}:epoch")
        return bool(epoch != old_epoch and int(admin.get("{" + prefix[:-1] + "}:rev") or 0) >= last and all(
            s.ready()[1].get("token") == f"{epoch}:{last}" for s in (a, b)))
    wait_until(recovered, RECOVERY_BOUND_S, 0.1, "the sidecars' state written back to the new primary")
    new_epoch = admin.get("{" + prefix[:-1] + "}:epoch")
    statuses = []
    for sidecar in (a, b):
        code, ready = sidecar.ready()
        loss = ready["dataLoss"]
        assert loss is not None and (loss["epoch"], loss["first"], loss["last"]) == (old_epoch, synced + 1, last), ready
        assert (loss["newEpoch"], loss["restoredTo"]) == (new_epoch, last), loss
        statuses.append(loss["status"])
        assert all(role_of(sidecar, uid) == "support" for uid in uids), f"{sidecar.name} lost a write"
        decision = sidecar.authorize(banned, "sendMessage", group, context={"messageType": "text"})
        assert decision["allowed"] is False and decision["code"] == "ERR_BANNED_GROUPMEMBER", decision
    assert sorted(statuses) == ["followed", "written"], statuses
    assert all(admin.hget(*user_field(prefix, uid)) == "support" for uid in uids)
    assert admin.sismember("{" + prefix[:-1] + "}:bans:" + group, banned)
    # writes resume in the new epoch, after every number the old one issued
    body = b.ok("PUT", f"/users/{unique('new')}", {"role": "support"})
    assert parse(body["token"]) == (new_epoch, last + 1)


def test_with_min_replicas_a_write_the_replica_lacks_is_never_acknowledged(sentinel: SentinelSetup, tmp_path: Path,
                                                                           started: list[SidecarProcess]) -> None:
    prefix = unique("wait") + ":"
    a, b = sidecars_on(sentinel, tmp_path, prefix, min_replicas=1)
    started += [a, b]
    start_all([a, b])
    acked = {}
    for n in range(6):  # WAIT 1 is met: acknowledged, and on the replica before the answer
        uid = unique("kept")
        acked[uid] = (a, b)[n % 2].ok("PUT", f"/users/{uid}", {"role": "support"})["revision"]
        with redis.Redis(port=sentinel.replica().port, decode_responses=True) as on_replica:
            assert on_replica.hget(*user_field(prefix, uid)) == "support", "acknowledged before replicated"
    last = max(acked.values())

    primary, replica = cut_replica_off(sentinel)
    try:
        for sidecar in (a, b):
            started_at = time.monotonic()
            response = put_user(sidecar, unique("unreplicated"))
            assert response.status_code == 503, response.text
            error = response.json()["error"]
            assert error["code"] == "ERR_WRITE_NOT_REPLICATED" and "not acknowledged" in error["message"], error
            assert time.monotonic() - started_at < 5
        primary.kill()
    finally:
        replica.resume()
    new = sentinel.wait_failover(primary)
    # the new primary has no replica yet: writes are refused, never acknowledged
    response = put_user(a, unique("alone"))
    assert response.status_code == 503, response.text
    # the old primary comes back as a replica of the new one: writes are accepted again
    primary.extra_args = ["--replicaof", "127.0.0.1", str(new.port)]
    primary.restart(wipe=True)
    sentinel.wait_in_sync(20)

    def accepted() -> Any:
        response = put_user(b, unique("again"))
        return response.json() if response.status_code == 200 else None
    body = wait_until(accepted, RECOVERY_BOUND_S, 0.2, "a write accepted once a replica is back")
    assert body["revision"] > last
    at_revision([a, b], body["revision"])
    for sidecar in (a, b):  # every acknowledged write survived the failover
        assert all(role_of(sidecar, uid) == "support" for uid in acked), f"{sidecar.name} lost a write"


# -- a cluster-mode Redis -------------------------------------------------------------------------
def test_sidecars_on_a_cluster_mode_redis(tmp_path: Path, started: list[SidecarProcess]) -> None:
    cluster = ClusterSetup(tmp_path / "cluster")
    try:
        cluster.start()
        prefix = unique("cl") + ":"
        a, b = (SidecarProcess(tmp_path, None, name=name, prefix=prefix, redis_args=cluster.redis_args())
                for name in ("a", "b"))
        started += [a, b]
        start_all([a, b])
        group, member = unique("g"), unique("m")
        a.ok("PUT", f"/groups/{group}", {"owner": unique("owner")})
        b.ok("PUT", f"/groups/{group}/members/{member}", {"scope": "moderator"})
        last = a.ok("POST", f"/groups/{group}/bannedusers/{member}")["revision"]
        uid = unique("u")
        last = b.ok("PUT", f"/users/{uid}", {"role": "support"})["revision"]
        at_revision([a, b], last)  # pub/sub hints and catch-up work across the cluster
        for sidecar in (a, b):
            decision = sidecar.authorize(member, "sendMessage", group, context={"messageType": "text"})
            assert decision["allowed"] is False and decision["code"] == "ERR_BANNED_GROUPMEMBER", decision
            assert role_of(sidecar, uid) == "support"
        tag = "{" + prefix[:-1] + "}:"
        keys: list[str] = []
        for node in cluster.nodes:  # a plain client a node (see ClusterSetup.client)
            with redis.Redis(port=node.port, socket_timeout=5, decode_responses=True) as on_node:
                keys += on_node.keys(tag + "*")
        assert len(keys) >= 5 and len({key_slot(k.encode()) for k in keys}) == 1, keys
        with cluster.node_client(tag) as owner:
            assert sorted(owner.keys(tag + "*")) == sorted(keys)  # all on the node of their slot
    finally:
        for sidecar in started:
            sidecar.stop()
        cluster.stop()
