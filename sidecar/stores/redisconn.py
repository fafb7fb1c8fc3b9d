"""How a sidecar reaches Redis: one URL, a primary watched by Sentinel, or a cluster-mode Redis.

RedisSpec says which (and how long to wait, and how many replicas must have a write before it
is acknowledged); spec_from(settings) builds it from the settings, connect(spec) the client,
open_store(settings) the RedisStore. This is the one place a Redis client is constructed.

- URL: redis.Redis.from_url.
- Sentinel (`--redis-sentinel host:port,... --redis-service NAME`): redis-py's Sentinel; every
  new connection asks the sentinels for the current primary, and a connection to a primary
  that was demoted (READONLY) is dropped, so after a failover the next attempt reaches the new
  one. Pub/sub connections are made the same way, so the sync thread follows too.
- Cluster (`--redis-cluster`, the URL one node of it): redis.cluster.RedisCluster. Every key
  of one prefix shares one hash tag (keyspace()), so one node holds them all and MULTI/EXEC,
  WATCH and the Lua scripts work as on one Redis; PUBLISH reaches the whole cluster. This is
  compatibility with managed cluster-mode Redis, not sharding: one app's state is one slot.
  The client is made on first use (it must reach a node to learn the slots), so a sidecar
  starts while the cluster is down, as it does on one Redis.

min_replicas (`--redis-min-replicas N`): every transaction that commits (a write, a write-back,
marked with confirm(pipe); never a read, nor the layout look of a load) is followed,
on the very connection that ran EXEC, by `WAIT N timeout`; fewer acknowledgements within the
timeout and the write is refused with 503 ERR_WRITE_NOT_REPLICATED instead of acknowledged.
WAIT must run on the connection of the write (it waits for that connection's last write), so
it is done inside the client's transaction pipeline: RedisStore's code needs no call of its own.
A transaction on a cluster is never retried by redis-py on a fresh connection (that would run
EXEC without the WATCH); the write's own retry loop starts it again from WATCH instead.
"""
from __future__ import annotations

import re
import threading
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster, TransactionStrategy
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from sidecar.errors import StoreError

if TYPE_CHECKING:
    from pathlib import Path

    from sidecar.config import Settings
    from sidecar.stores.redisstore import RedisStore

NOT_REPLICATED = "ERR_WRITE_NOT_REPLICATED"


@dataclass(frozen=True)
class RedisSpec:
    """Where Redis is: url (one Redis, or with cluster=True a node of a cluster) or sentinels +
    service; timeout_s for sockets (and WAIT); min_replicas that must have each write."""

    url: str | None = None
    sentinels: tuple[tuple[str, int], ...] = ()
    service: str | None = None
    cluster: bool = False
    timeout_s: float = 1.0
    min_replicas: int = 0

    def __post_init__(self) -> None:
        if bool(self.url) == bool(self.sentinels):
            raise ValueError("Redis needs either a URL or Sentinel addresses, not both")
        if self.sentinels and not self.service:
            raise ValueError("Sentinel needs the service name of the primary (--redis-service)")
        if self.cluster and not self.url:
            raise ValueError("a cluster-mode Redis is reached through the URL of one of its nodes")
        if self.min_replicas < 0:
            raise ValueError(f"min_replicas must be 0 or more, got {self.min_replicas}")

    @property
    def identity(self) -> str:
        """Names this Redis (for the seen-revision record's file name); a URL stays as it was."""
        if self.url:
            return self.url
        hosts = ",".join(f"{host}:{port}" for host, port in self.sentinels)
        return f"sentinel://{hosts}/{quote(self.service or '')}"

    def describe(self) -> str:
        """For people: no password."""
        from sidecar.logs import redact
        if self.url:
            return f"Redis cluster {redact(self.url)}" if self.cluster else f"Redis {redact(self.url)}"
        return f"Redis service {self.service!r} from Sentinel {','.join(f'{h}:{p}' for h, p in self.sentinels)}"


def parse_sentinels(text: str) -> tuple[tuple[str, int], ...]:
    """'host:port[,host:port...]' -> ((host, port), ...); ValueError says what is wrong."""
    found: list[tuple[str, int]] = []
    for item in text.split(","):
        item = item.strip()
        host, sep, port = item.rpartition(":")
        host = host.strip("[]")  # [::1]:26379
        if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
            raise ValueError(f"redis_sentinel must be host:port[,host:port...], got {item!r} in {text!r}")
        found.append((host, int(port)))
    return tuple(found)


def has_hash_tag(key: str) -> bool:
    """Redis's rule: the part between the first '{' and the first '}' after it, if not empty."""
    start = key.find("{")
    return start >= 0 and key.find("}", start + 1) > start + 1


def keyspace(prefix: str) -> str:
    """What every key of `prefix` starts with: the prefix inside one hash tag, so all of one
    app's keys are in one cluster slot. 'chatauthz:' -> '{chatauthz}:', 'app' -> '{app}'; the
    tagged spelling names the same keys ('{chatauthz}:' -> '{chatauthz}:'). Nothing else is
    taken: a tag followed by more ('{chatauthz}:members:') would share the keys of another app
    (its 'epoch' would be that app's group 'epoch'), so two prefixes never overlap."""
    tagged = _TAGGED.fullmatch(prefix)
    if tagged is not None:
        return prefix
    if _PLAIN.fullmatch(prefix) is None:
        raise ValueError(f"redis_prefix {prefix!r} cannot make a hash tag; use letters, digits, '_', '-', '.' "
                         "and ':' (for example chatauthz:), or that inside braces ({chatauthz}:)")
    tag, colon = (prefix[:-1], ":") if prefix.endswith(":") else (prefix, "")
    return "{" + tag + "}" + colon


_NAME = r"[A-Za-z0-9_.\-]+(?::[A-Za-z0-9_.\-]+)*"
_PLAIN = re.compile(_NAME + ":?")
_TAGGED = re.compile(r"\{" + _NAME + r"\}:?")


def spec_from(settings: Settings) -> RedisSpec | None:
    """The settings' Redis, or None for the embedded store (Settings.validate checked the mix)."""
    if not (settings.redis_url or settings.redis_sentinel):
        return None
    return RedisSpec(url=settings.redis_url or None,
                     sentinels=parse_sentinels(settings.redis_sentinel) if settings.redis_sentinel else (),
                     service=settings.redis_service, cluster=settings.redis_cluster,
                     timeout_s=settings.redis_timeout_s, min_replicas=settings.redis_min_replicas)


def open_store(settings: Settings, *, seen_dir: Path | None = None, recovery_grace_s: float = 0.0) -> RedisStore:
    """The RedisStore of the settings (the caller checked that they name a Redis)."""
    from sidecar.stores.redisstore import RedisStore
    spec = spec_from(settings)
    if spec is None:
        raise ValueError("no Redis configured")
    return RedisStore(spec, settings.redis_prefix, settings.redis_timeout_s, recovery_grace_s=recovery_grace_s,
                      seen_dir=seen_dir)


def connect(spec: RedisSpec) -> Any:
    """A client (decoded strings, spec.timeout_s on every socket) for spec's Redis."""
    options: dict[str, Any] = {"socket_timeout": spec.timeout_s, "socket_connect_timeout": spec.timeout_s,
                               "decode_responses": True, "health_check_interval": 5}
    if spec.cluster:
        url = str(spec.url)
        return LazyClient(lambda: _Cluster.from_url(url, min_replicas=spec.min_replicas, timeout_s=spec.timeout_s,
                                                    **options))
    if spec.url:
        client: Any = _Redis.from_url(spec.url, **options)
    else:
        from redis.sentinel import Sentinel
        sentinel = Sentinel(list(spec.sentinels), sentinel_kwargs={  # type: ignore[no-untyped-call]
            "socket_timeout": spec.timeout_s, "socket_connect_timeout": spec.timeout_s})
        client = sentinel.master_for(str(spec.service), redis_class=_Redis, **options)  # type: ignore[no-untyped-call]
        client.sentinel = sentinel
    client.min_replicas, client.timeout_s = spec.min_replicas, spec.timeout_s
    return client


def confirm(pipe: Any) -> Any:
    """Mark a transaction pipeline as one that commits a write: its EXEC is followed by WAIT
    (with min_replicas). Reads, and the layout look a load makes, are never made to wait."""
    pipe.chatauthz_confirm = True
    return pipe


def confirming(pipe: Any) -> bool:
    return bool(getattr(pipe, "chatauthz_confirm", False))


def confirm_replicated(connection: Any, min_replicas: int, timeout_s: float) -> None:
    """WAIT on the connection that just ran EXEC; StoreError unless min_replicas acknowledged.

    Never a redis error: redis-py would take that for a broken connection and run the
    transaction again."""
    try:
        connection.send_command("WAIT", min_replicas, max(1, int(timeout_s * 1000)))
        acknowledged = int(connection.read_response(timeout=timeout_s + 1.0))
    except (redis.RedisError, OSError, ValueError) as exc:
        connection.disconnect()
        raise StoreError(f"the write reached the Redis primary, but whether {min_replicas} replica(s) have it "
                         f"could not be learnt ({type(exc).__name__}: {exc}); it was not acknowledged and "
                         "may or may not survive a failover: read it back before writing it again",
                         code=NOT_REPLICATED) from exc
    if acknowledged < min_replicas:
        raise StoreError(f"the write reached the Redis primary but only {acknowledged} of the {min_replicas} "
                         f"replica(s) required (redis_min_replicas) had it within {timeout_s}s; it was not "
                         "acknowledged and may or may not survive a failover: read it back before writing it "
                         "again", code=NOT_REPLICATED)


class _WaitingPipeline(redis.client.Pipeline):
    """A transaction pipeline that WAITs for min_replicas after its EXEC, on that connection."""

    min_replicas = 0
    timeout_s = 1.0

    def _execute_transaction(self, connection: Any, commands: Any, raise_on_error: Any) -> Any:
        data = super()._execute_transaction(connection, commands, raise_on_error)
        if confirming(self):
            confirm_replicated(connection, self.min_replicas, self.timeout_s)
        return data


class _Redis(redis.Redis):
    """One Redis, or Sentinel's current primary."""

    min_replicas = 0
    timeout_s = 1.0
    sentinel: Any = None

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        if not transaction or self.min_replicas <= 0:
            return super().pipeline(transaction, shard_hint)
        pipe = _WaitingPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)
        pipe.min_replicas, pipe.timeout_s = self.min_replicas, self.timeout_s
        return pipe

    def close(self) -> None:
        super().close()
        if self.sentinel is not None:
            self.sentinel.close()


class _ClusterTransaction(TransactionStrategy):
    """MULTI/EXEC on the node of our one slot: no blind retry, PUBLISH inside, WAIT after EXEC."""

    def __init__(self, pipe: Any, min_replicas: int, timeout_s: float) -> None:
        super().__init__(pipe)
        # redis-py would retry a failed WATCH or EXEC on a new connection, where the WATCH is
        # gone: EXEC would then run unconditionally. Fail instead; the write starts over.
        self._retry = Retry(NoBackoff(), 0)
        self._retry.update_supported_errors(RedisCluster.ERRORS_ALLOW_RETRY + self.SLOT_REDIRECT_ERRORS)
        self.min_replicas, self.timeout_s = min_replicas, timeout_s

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if args and str(args[0]).upper() == "PUBLISH" and self._explicit_transaction:
            return self.pipeline_execute_command(*args, **kwargs)  # type: ignore[no-untyped-call]
        return super().execute_command(*args, **kwargs)  # type: ignore[no-untyped-call]

    def _execute_transaction(self, stack: Any, raise_on_error: bool) -> Any:
        data = super()._execute_transaction(stack, raise_on_error)
        if self.min_replicas > 0 and confirming(self._pipe):
            confirm_replicated(self._transaction_connection, self.min_replicas, self.timeout_s)
        return data


class _Cluster(RedisCluster):
    def __init__(self, *args: Any, min_replicas: int = 0, timeout_s: float = 1.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.min_replicas, self.timeout_s = min_replicas, timeout_s

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
        pipe = super().pipeline(transaction, shard_hint)  # type: ignore[no-untyped-call]
        if transaction:
            pipe._execution_strategy = _ClusterTransaction(pipe, self.min_replicas, self.timeout_s)
            # redis-py blocks these on cluster pipelines (their keys may span nodes); in a
            # transaction on our one slot they are fine, and PUBLISH reaches the whole cluster
            pipe.mget = types.MethodType(lambda self, *keys: self.execute_command("MGET", *keys), pipe)
            pipe.publish = types.MethodType(lambda self, channel, message: self.execute_command(
                "PUBLISH", channel, message), pipe)
        return pipe


class LazyClient:
    """Stands for a client made on first use; a failure to make it is a redis.ConnectionError
    (a StoreError to the store, a retry to the sync thread), and the next use tries again."""

    def __init__(self, build: Callable[[], Any]) -> None:
        self._build = build
        self._client: Any = None
        self._lock = threading.Lock()

    def resolve(self) -> Any:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    try:
                        self._client = self._build()
                    except (redis.RedisError, RedisClusterException) as exc:
                        raise redis.ConnectionError(f"cannot reach the Redis cluster: {exc}") from exc
        return self._client

    def __getattr__(self, name: str) -> Any:
        return getattr(self.resolve(), name)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def unwrap(client: Any) -> Any:
    return client.resolve() if isinstance(client, LazyClient) else client


def is_cluster(client: Any) -> bool:
    return isinstance(unwrap(client), RedisCluster)
