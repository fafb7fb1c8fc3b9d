"""Settings: defaults, then CHATAUTHZ_* variables, then command-line flags. Nothing else reads os.environ."""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

PROJECT_DIR = Path(__file__).resolve().parent.parent
# The shipped policies sit next to the package in a source checkout (and an editable install);
# an installed wheel has none: then ./policies, or CHATAUTHZ_POLICIES.
DEFAULT_POLICIES = PROJECT_DIR / "policies" if (PROJECT_DIR / "policies").is_dir() else Path("policies")


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8787
    uds: Path | None = None  # listen on this Unix socket instead of host:port
    data_dir: Path = Path("data")
    policies: Path = DEFAULT_POLICIES
    model: Path | None = None  # default: <policies>/../model.conf
    workers: int = 1
    threads: int = 4
    server: str = "granian"
    api_key: str | None = None
    authorize_key: str | None = None
    max_roles: int = 25
    revision_wait_s: float = 2.0
    body_timeout_s: float = 3.0  # a request body must arrive within this (else 408)
    max_batch: int = 1000
    max_body_bytes: int = 1024 * 1024  # a larger request body is a 413
    redis_url: str | None = None
    redis_sentinel: str | None = None  # "host:port[,host:port...]": find the primary through Sentinel
    redis_service: str | None = None  # the Sentinel service (master name) to follow
    redis_cluster: bool = False  # redis_url is a node of a cluster-mode Redis
    redis_min_replicas: int = 0  # acknowledge a write only once this many replicas have it (WAIT)
    redis_prefix: str = "chatauthz:"
    redis_timeout_s: float = 1.0
    sync_interval_s: float = 1.0
    redis_recovery_grace_s: float = 5.0  # after Redis lost writes: how long sidecars gather claims
    max_staleness_s: float | None = None
    policy_watch_s: float = 1.0
    policy_settle_s: float = 1.0  # a change is taken once the files stayed the same this long
    decision_log: str | None = None  # a file path, or "-" for stdout
    decision_log_deny_only: bool = False
    decision_log_sample: float = 1.0
    cache_entries: int = 0  # > 0: hold users, owners, memberships and bans as a cache of this many facts
    store_id: str | None = None  # "dev:inode" of the embedded database: serve pins it for its workers

    @property
    def redis_enabled(self) -> bool:
        """Runtime state in Redis (a URL or Sentinel), else in the embedded SQLite file."""
        return bool(self.redis_url or self.redis_sentinel)

    @property
    def model_path(self) -> Path:
        return self.model or self.policies.parent / "model.conf"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """CHATAUTHZ_<FIELD> variables, then explicit overrides (flags) that are not None."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get("CHATAUTHZ_" + f.name.upper())
            if raw not in (None, ""):
                values[f.name] = _convert(f.name, raw)
        values.update({k: _convert(k, v) if isinstance(v, str) else v
                       for k, v in overrides.items() if v is not None})
        settings = replace(cls(), **values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0-65535, got {self.port}")
        if not 1 <= self.workers <= 64:
            raise ValueError(f"workers must be 1-64, got {self.workers}")
        if not 1 <= self.threads <= 64:
            raise ValueError(f"threads must be 1-64, got {self.threads}")
        if not 0.0 <= self.decision_log_sample <= 1.0:
            raise ValueError(f"decision_log_sample must be 0-1, got {self.decision_log_sample}")
        if self.policy_settle_s < 0:
            raise ValueError(f"policy_settle_s must be 0 or more, got {self.policy_settle_s}")
        if not 0 < self.body_timeout_s <= 300:
            raise ValueError(f"body_timeout_s must be in (0, 300], got {self.body_timeout_s}")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be 1 or more, got {self.max_batch}")
        if not 1024 <= self.max_body_bytes <= 64 * 1024 * 1024:
            raise ValueError(f"max_body_bytes must be 1024-67108864, got {self.max_body_bytes}")
        if self.cache_entries != 0 and self.cache_entries < 1000:
            raise ValueError(f"cache_entries must be 0 (hold the whole state) or at least 1000, got {self.cache_entries}")
        if self.server not in ("granian", "gunicorn"):
            raise ValueError(f"server must be granian or gunicorn, got {self.server!r}")
        for f in fields(self):  # nan passes no comparison, so it would pass every range below
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{f.name} must be a number, got {value}")
            if isinstance(value, float) and value < 0:  # a time or a share: never below 0
                raise ValueError(f"{f.name} must be 0 or more, got {value}")
        if self.sync_interval_s <= 0:
            raise ValueError(f"sync_interval_s must be more than 0 (how often a sidecar looks at Redis), "
                             f"got {self.sync_interval_s}")
        if self.max_staleness_s is not None and self.max_staleness_s <= 0:
            raise ValueError(f"max_staleness_s must be more than 0 (or unset: no bound), got {self.max_staleness_s}")
        if self.decision_log not in (None, "-"):
            folder = Path(str(self.decision_log)).parent
            if not folder.is_dir() or not os.access(folder, os.W_OK):
                raise ValueError(f"decision_log {self.decision_log!r}: its folder {str(folder)!r} is not a "
                                 "folder this process may write in")
        self._validate_redis()

    def _validate_redis(self) -> None:
        if not (self.redis_enabled or self.redis_service or self.redis_cluster or self.redis_min_replicas):
            return  # the embedded store: no Redis module is imported
        from sidecar.stores.redisconn import keyspace, parse_sentinels
        if self.redis_url and self.redis_sentinel:
            raise ValueError("redis_url and redis_sentinel are two ways to find Redis: give one of them "
                             "(--redis-url, or --redis-sentinel with --redis-service)")
        if self.redis_sentinel:
            parse_sentinels(self.redis_sentinel)
            if not self.redis_service:
                raise ValueError("redis_sentinel needs redis_service, the name of the primary Sentinel "
                                 "watches (--redis-service)")
        elif self.redis_service:
            raise ValueError("redis_service names a primary watched by Sentinel: it needs redis_sentinel "
                             "(--redis-sentinel host:port[,host:port...])")
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"redis_url must start with redis://, rediss:// or unix://, got {self.redis_url!r} "
                             "(for example redis://127.0.0.1:6379/0)")
        if self.redis_url:
            _check_redis_url(self.redis_url)
        if self.redis_cluster and not self.redis_url:
            raise ValueError("redis_cluster needs redis_url, the address of one node of the cluster "
                             "(Sentinel and cluster mode do not mix)")
        if self.redis_min_replicas < 0:
            raise ValueError(f"redis_min_replicas must be 0 or more, got {self.redis_min_replicas}")
        if self.redis_min_replicas and not self.redis_enabled:
            raise ValueError("redis_min_replicas counts Redis replicas: it needs redis_url or redis_sentinel "
                             "(the embedded store has no replicas)")
        if self.redis_enabled:
            keyspace(self.redis_prefix)
            if not 0 < self.redis_timeout_s <= 60:
                raise ValueError(f"redis_timeout_s must be in (0, 60], got {self.redis_timeout_s}")


def _convert(name: str, raw: str) -> Any:
    kind = {f.name: f.type for f in fields(Settings)}[name]
    try:
        if kind == "int":
            return int(raw)
        if kind in ("float", "float | None"):
            return float(raw)
    except ValueError:
        raise ValueError(f"CHATAUTHZ_{name.upper()} must be a number, got {raw!r}") from None
    if kind == "bool":
        if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise ValueError(f"CHATAUTHZ_{name.upper()} must be true or false, got {raw!r}")
        return raw.lower() in ("1", "true", "yes")
    if "Path" in str(kind):
        return Path(raw)
    return raw


def _check_redis_url(url: str) -> None:
    """A Redis URL the connection reads as written: its parser (redis-py's parse_url) accepts it,
    it names a host (or a socket path), and its database, if any, is a number 0 or more (parse_url
    would take "/x" as database 0, someone else's, and "/-1" as a database no Redis has)."""
    from urllib.parse import urlsplit

    from redis.connection import parse_url  # the parser the connection uses: one truth
    example = "(for example redis://127.0.0.1:6379/0)"
    try:
        parsed = parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        raise ValueError(f"redis_url {url!r} is not a Redis URL: {exc} {example}") from None
    if not (parsed.get("host") or parsed.get("path")):
        raise ValueError(f"redis_url {url!r} names no host (nor a socket path) {example}")
    database = urlsplit(url).path.strip("/") if not url.startswith("unix://") else ""
    if database and not database.isdigit() or parsed.get("db", 0) < 0:
        raise ValueError(f"redis_url {url!r}: the database must be a number 0 or more {example}")
