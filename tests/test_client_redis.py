"""Read-your-writes across sidecars: two sidecars on one real redis-server; a Client writes on A
and the token it gets makes a check on B decide at that revision or later (B catches up first),
every time, however soon after the write it asks. Embedded on the same Redis too."""
from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.client import AsyncClient, Client
from sidecar.client.embedded import Embedded
from tests.redis_support import TEST_API_KEY, RedisServer, SidecarProcess, unique

pytestmark = [pytest.mark.integration, pytest.mark.redis]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, SidecarProcess, SidecarProcess]]:
    base = tmp_path_factory.mktemp("client-redis")
    redis = RedisServer(base)
    prefix = unique("client") + ":"
    # B hears of changes late on its own (a long poll interval), so only the token makes it current
    a = SidecarProcess(base, redis.url, name="a", prefix=prefix)
    b = SidecarProcess(base, redis.url, name="b", prefix=prefix, sync_interval_s=30.0)
    try:
        redis.start()
        a.start()
        b.start()
        yield redis, a, b
    finally:
        for sidecar in (b, a):
            sidecar.stop()
        redis.stop()


def test_a_write_on_one_sidecar_is_read_on_another_with_its_token(
        pair: tuple[RedisServer, SidecarProcess, SidecarProcess]) -> None:
    _, a, b = pair
    with Client(a.url, api_key=TEST_API_KEY, timeout=5.0) as on_a, \
            Client(b.url, api_key=TEST_API_KEY, timeout=5.0) as on_b:
        uid = unique("u")
        for i in range(20):
            role = "support" if i % 2 == 0 else "default"
            token = on_a.set_role(uid, role)
            decision = on_b.check(uid, "createGroup", at_least_revision=token)
            assert decision.role == role and decision.revision >= token.revision, (i, decision)
            assert decision.token.rpartition(":")[0] == token.rpartition(":")[0]
        guid, owner, member = unique("g"), unique("own"), unique("m")
        on_a.create_group(guid, owner)
        token = on_a.add_members(guid, participants=[member])
        assert on_b.check(member, "sendMessage", guid, context={"messageType": "text"},
                          at_least_revision=token).allowed
        token = on_a.ban(guid, member)
        assert on_b.check(member, "sendMessage", guid, context={"messageType": "text"},
                          at_least_revision=token).code == "ERR_BANNED_GROUPMEMBER"


def test_async_tokens_across_sidecars(pair: tuple[RedisServer, SidecarProcess, SidecarProcess]) -> None:
    _, a, b = pair

    async def scenario() -> None:
        async with AsyncClient(a.url, api_key=TEST_API_KEY, timeout=5.0) as on_a, \
                AsyncClient(b.url, api_key=TEST_API_KEY, timeout=5.0) as on_b:
            uid = unique("u")
            for role in ("support", "default", "support"):
                token = await on_a.set_role(uid, role)
                assert (await on_b.check(uid, "createGroup", at_least_revision=token)).role == role
    asyncio.run(scenario())


def test_embedded_on_the_same_redis(pair: tuple[RedisServer, SidecarProcess, SidecarProcess],
                                    tmp_path: Path) -> None:
    redis, a, _ = pair
    prefix = a.env_extra["CHATAUTHZ_REDIS_PREFIX"]
    with Client(a.url, api_key=TEST_API_KEY, timeout=5.0) as on_a, \
            Embedded(redis_url=redis.url, data_dir=tmp_path / "emb", redis_prefix=prefix) as embedded:
        uid = unique("u")
        token = on_a.set_role(uid, "support")
        assert embedded.check(uid, "createGroup", at_least_revision=token).role == "support"
        written = embedded.set_role(uid, "default")  # and the other way round
        assert on_a.check(uid, "createGroup", at_least_revision=written).role == "default"
