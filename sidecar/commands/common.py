"""What the subcommands share: settings from flags, the policy, and the runtime state to read."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from sidecar.config import Settings
from sidecar.errors import ChatAuthzError, PolicyError
from sidecar.policy import PolicySet, load_policy
from sidecar.state import RuntimeState

EXIT_USAGE = 2
EXIT_INVALID_POLICY = 3
STORE_FILE = "chatauthz.sqlite3"


class CommandError(Exception):
    """Ends a subcommand with an exit code and lines for stderr."""

    def __init__(self, code: int, *lines: str) -> None:
        super().__init__("\n".join(lines))
        self.code, self.lines = code, lines


def add_policy_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policies", help="policy folder (CHATAUTHZ_POLICIES, default the shipped one)")
    parser.add_argument("--model", help="Casbin model (CHATAUTHZ_MODEL, default <policies>/../model.conf)")


def add_store_options(parser: argparse.ArgumentParser, *, world: bool) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--data-dir", help=f"read the embedded store <data-dir>/{STORE_FILE} (CHATAUTHZ_DATA_DIR)")
    where.add_argument("--redis-url", help="read the runtime state from Redis (CHATAUTHZ_REDIS_URL)")
    where.add_argument("--redis-sentinel", help="find the Redis primary through these sentinels, host:port[,...] "
                       "(CHATAUTHZ_REDIS_SENTINEL; with --redis-service)")
    if world:
        where.add_argument("--world", help="read a YAML world in the policy test suites' format")
    add_redis_options(parser)


def add_redis_options(parser: argparse.ArgumentParser) -> None:
    """The Redis flags besides the URL (and Sentinel): prefix, service, cluster mode."""
    parser.add_argument("--redis-prefix", help="Redis key prefix (CHATAUTHZ_REDIS_PREFIX, default chatauthz:)")
    parser.add_argument("--redis-service", help="the Sentinel service (master name) to follow (CHATAUTHZ_REDIS_SERVICE)")
    parser.add_argument("--redis-cluster", action="store_const", const=True,
                        help="--redis-url is a node of a cluster-mode Redis (CHATAUTHZ_REDIS_CLUSTER)")


def redis_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The Redis flags of add_store_options, for settings_from."""
    return {"redis_url": args.redis_url, "redis_sentinel": getattr(args, "redis_sentinel", None),
            "redis_service": args.redis_service, "redis_cluster": args.redis_cluster,
            "redis_prefix": args.redis_prefix}


def settings_from(**flags: Any) -> Settings:
    try:
        return Settings.from_env(**flags)
    except ValueError as exc:
        raise CommandError(EXIT_USAGE, f"chatauthz: {exc}") from exc


def policy_of(settings: Settings) -> PolicySet:
    if not settings.policies.is_dir():
        raise CommandError(EXIT_USAGE, f"chatauthz: {settings.policies} is not a folder")
    try:
        return load_policy(settings.policies, settings.model_path)
    except PolicyError as exc:
        raise CommandError(EXIT_INVALID_POLICY, f"chatauthz: invalid policy in {settings.policies}:",
                           *exc.problems) from exc


def state_of(settings: Settings) -> tuple[RuntimeState, str]:
    """The runtime state from Redis or the embedded store (never created here), and its origin."""
    if settings.redis_enabled:
        from sidecar.stores import redisconn
        store: Any = redisconn.open_store(settings)
        origin = f"{store.spec.describe()} (prefix {settings.redis_prefix})"
    else:
        path = Path(settings.data_dir) / STORE_FILE
        if not path.is_file():
            raise CommandError(EXIT_USAGE, f"chatauthz: no embedded store at {path}; pass the sidecar's "
                               "--data-dir, or --redis-url (or --redis-sentinel)")
        from sidecar.stores.sqlite import SQLiteStore
        store, origin = SQLiteStore(path), str(path)
    try:
        return store.load(), origin
    except ChatAuthzError as exc:
        raise CommandError(EXIT_USAGE, f"chatauthz: cannot read the runtime state from {origin}: "
                           f"{exc.message}") from exc
    finally:
        store.close()


def report_error(error: CommandError) -> int:
    for line in error.lines:
        print(line, file=sys.stderr)
    return error.code
