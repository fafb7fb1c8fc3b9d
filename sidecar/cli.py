"""The chatauthz command: `serve` runs the sidecar; check, authorize and export are in sidecar.commands."""
from __future__ import annotations

import argparse
import sys

from sidecar.config import Settings
from sidecar.errors import PolicyError, StoreError

EXIT_USAGE = 2
EXIT_BAD_DATA = 2  # the data folder or its database cannot work (read-only, full, damaged)
EXIT_INVALID_POLICY = 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chatauthz", description="Authorization sidecar for chat services.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the HTTP API (granian or gunicorn)")
    serve.add_argument("--host", help="address to bind (CHATAUTHZ_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (CHATAUTHZ_PORT, default 8787)")
    serve.add_argument("--uds", help="listen on this Unix socket (mode 0660) instead of host:port (CHATAUTHZ_UDS)")
    serve.add_argument("--data-dir", help="data folder (CHATAUTHZ_DATA_DIR, default ./data)")
    serve.add_argument("--policies", help="policy folder (CHATAUTHZ_POLICIES, default the shipped one)")
    serve.add_argument("--model", help="Casbin model (CHATAUTHZ_MODEL, default <policies>/../model.conf)")
    serve.add_argument("--workers", type=int, help="worker processes (CHATAUTHZ_WORKERS, default 1)")
    serve.add_argument("--threads", type=int, help="threads per worker (CHATAUTHZ_THREADS, default 4)")
    serve.add_argument("--server", choices=("granian", "gunicorn"),
                       help="WSGI server (CHATAUTHZ_SERVER, default granian)")
    serve.add_argument("--body-timeout", type=float, dest="body_timeout_s",
                       help="seconds a request body may take to arrive, else 408 (CHATAUTHZ_BODY_TIMEOUT_S, default 3)")
    serve.add_argument("--redis-url", help="keep runtime state in Redis (CHATAUTHZ_REDIS_URL)")
    serve.add_argument("--redis-sentinel", help="find the Redis primary through these sentinels, "
                       "host:port[,host:port...] (CHATAUTHZ_REDIS_SENTINEL; with --redis-service)")
    serve.add_argument("--redis-service", help="the Sentinel service (master name) to follow (CHATAUTHZ_REDIS_SERVICE)")
    serve.add_argument("--redis-cluster", action="store_const", const=True,
                       help="--redis-url is a node of a cluster-mode Redis (CHATAUTHZ_REDIS_CLUSTER)")
    serve.add_argument("--redis-min-replicas", type=int, help="acknowledge a write only once this many replicas "
                       "have it, by WAIT (CHATAUTHZ_REDIS_MIN_REPLICAS, default 0)")
    serve.add_argument("--redis-prefix", help="Redis key prefix (CHATAUTHZ_REDIS_PREFIX, default chatauthz:)")
    serve.add_argument("--cache-entries", type=int, dest="cache_entries",
                       help="hold users, owners, memberships and bans as a cache of this many facts, read from "
                       "the store on a miss; 0 holds the whole state (CHATAUTHZ_CACHE_ENTRIES, default 0)")
    serve.add_argument("--max-staleness", type=float, dest="max_staleness_s",
                       help="deny when state is older than this many seconds (CHATAUTHZ_MAX_STALENESS_S)")
    serve.add_argument("--decision-log", help="JSON-lines decision log: a file, or - for stdout "
                       "(CHATAUTHZ_DECISION_LOG)")
    serve.add_argument("--decision-log-deny-only", action="store_const", const=True,
                       help="log denials only (CHATAUTHZ_DECISION_LOG_DENY_ONLY)")
    serve.add_argument("--decision-log-sample", type=float,
                       help="fraction of decisions to log, 0-1 (CHATAUTHZ_DECISION_LOG_SAMPLE)")
    from sidecar.commands import add_commands  # check, authorize, export
    add_commands(commands)
    probe = commands.add_parser("healthcheck", help="exit 0 when the local sidecar is ready (container probes)")
    probe.add_argument("--url", help="base URL (default http://127.0.0.1:<CHATAUTHZ_PORT or 8787>)")
    probe.add_argument("--live", action="store_true", help="check liveness only (/health/live)")
    probe.add_argument("--timeout", type=float, default=3.0, help="seconds to wait (default 3)")
    probe.set_defaults(run=healthcheck)
    args = parser.parse_args(argv)
    if args.command != "serve":
        return int(args.run(args))
    try:
        settings = Settings.from_env(host=args.host, port=args.port, uds=args.uds, data_dir=args.data_dir,
                                     policies=args.policies, model=args.model, workers=args.workers,
                                     threads=args.threads, server=args.server,
                                     body_timeout_s=args.body_timeout_s, redis_url=args.redis_url,
                                     redis_sentinel=args.redis_sentinel, redis_service=args.redis_service,
                                     redis_cluster=args.redis_cluster, redis_min_replicas=args.redis_min_replicas,
                                     redis_prefix=args.redis_prefix, max_staleness_s=args.max_staleness_s,
                                     cache_entries=args.cache_entries, decision_log=args.decision_log,
                                     decision_log_deny_only=args.decision_log_deny_only,
                                     decision_log_sample=args.decision_log_sample)
    except ValueError as exc:
        print(f"chatauthz: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return serve_forever(settings)


def healthcheck(args: argparse.Namespace) -> int:
    """GET /health/ready (or /health/live); print the answer; 0 when it is 200, else 1."""
    import urllib.error
    import urllib.request
    base = args.url or f"http://127.0.0.1:{Settings.from_env().port}"
    url = base.rstrip("/") + ("/health/live" if args.live else "/health/ready")
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as response:  # noqa: S310 - local probe
            print(response.read().decode("utf-8", "replace"))
            return 0
    except urllib.error.HTTPError as exc:
        print(exc.read().decode("utf-8", "replace"))
    except (OSError, ValueError) as exc:
        print(f"chatauthz healthcheck: {url}: {exc}", file=sys.stderr)
    return 1


def serve_forever(settings: Settings) -> int:
    from sidecar import serving
    from sidecar.compose import load_with_fallback, preflight
    from sidecar.keys import load_keys
    address = f"unix:{settings.uds}" if settings.uds else f"{settings.host}:{settings.port}"
    try:  # first, before touching the data folder; the server then serves this very socket
        sock = serving.listen_unix(settings.uds) if settings.uds else serving.listen(settings.host, settings.port)
    except OSError as exc:
        print(f"chatauthz: cannot listen on {address}: {serving.listen_error(exc, settings.uds is not None)}", file=sys.stderr)
        return EXIT_USAGE
    try:
        settings = preflight(settings)  # pins the database for the workers
    except StoreError as exc:
        sock.close()
        print(f"chatauthz: refusing to start: {exc.message}", file=sys.stderr)
        return EXIT_BAD_DATA
    try:
        _, problems = load_with_fallback(settings)  # refuse to start with no valid policy at all
    except PolicyError as exc:
        sock.close()
        print(f"chatauthz: refusing to start: {exc}", file=sys.stderr)
        return EXIT_INVALID_POLICY
    if problems:
        print("chatauthz: the policy files are invalid; serving the last good policy kept in the data "
              "folder:\n  " + "\n  ".join(problems), file=sys.stderr, flush=True)
    keys = load_keys(settings.data_dir, settings.api_key, settings.authorize_key)
    from sidecar.stores.redisconn import spec_from
    spec = spec_from(settings)
    where = spec.describe() if spec is not None else f"{settings.data_dir.resolve()}"
    print(f"chatauthz: listening on {f'unix://{settings.uds}' if settings.uds else f'http://{address}'} "
          f"({settings.workers} worker(s), state in {where})", flush=True)
    print(f"chatauthz: management API key from {keys.source}", flush=True)
    serving.run(settings, sock)
    return 0




if __name__ == "__main__":
    sys.exit(main())
