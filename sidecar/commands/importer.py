"""`chatauthz import FILE|-`: bulk-load users' roles, groups, members and bans (NDJSON, one
record a line: see sidecar/importing.py) into the embedded store or Redis.

Every line is read and planned as the API would (on the store's state plus the lines before
it) before anything is written. A bad line is reported as FILE:LINE: message and, unless
--partial, nothing of the file is written (exit 3). Then the ops are committed in batches of
about --batch-size ops, each one revision of the journal (sidecars catch up as from any write);
a batch never splits a record. Each batch first checks that nobody else wrote since the
import read the store (else it stops: run it again; a re-run writes only what is missing).
Exit 0 all imported, 2 usage or a store that cannot be used, 3 bad lines.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from typing import IO, Any

from sidecar.commands.common import (
    EXIT_USAGE,
    CommandError,
    add_policy_options,
    add_redis_options,
    policy_of,
    redis_flags,
    report_error,
    settings_from,
)
from sidecar.errors import ChatAuthzError, ConflictError
from sidecar.importing import Record, parse_record, plan_record
from sidecar.state import Op

EXIT_BAD_LINES = 3
MAX_SHOWN = 50  # bad lines printed; the count says how many more


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("import", help="bulk-load users, groups, members and bans (NDJSON) into the store",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", help="the NDJSON file, or - for stdin")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--data-dir", help="the embedded store's data folder (CHATAUTHZ_DATA_DIR, default data)")
    where.add_argument("--redis-url", help="import into Redis (CHATAUTHZ_REDIS_URL)")
    where.add_argument("--redis-sentinel", help="import into the Redis primary these sentinels name, host:port[,...] "
                       "(CHATAUTHZ_REDIS_SENTINEL; with --redis-service)")
    add_redis_options(parser)
    parser.add_argument("--redis-min-replicas", type=int, help="a batch counts only once this many replicas have "
                        "it (CHATAUTHZ_REDIS_MIN_REPLICAS)")
    add_policy_options(parser)
    parser.add_argument("--partial", action="store_true", help="write the good lines even if some are bad")
    parser.add_argument("--batch-size", type=int, default=20_000, help="ops per revision (default 20000)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        if args.batch_size < 1:
            raise CommandError(EXIT_USAGE, "chatauthz import: --batch-size must be at least 1")
        return import_file(args)
    except CommandError as error:
        return report_error(error)


def import_file(args: argparse.Namespace) -> int:
    from sidecar.compose import open_store
    from sidecar.core import WriteContext
    from sidecar.engine import Engine
    from sidecar.stores import redisconn
    settings = settings_from(data_dir=args.data_dir, policies=args.policies, model=args.model,
                             redis_min_replicas=args.redis_min_replicas, **redis_flags(args))
    policy = policy_of(settings)
    name = "stdin" if args.file == "-" else args.file
    started = time.perf_counter()
    records, problems = read_records(args.file, name)
    try:  # Redis: no seen-revision records of its own (those are a sidecar's, for its recovery)
        store = redisconn.open_store(settings) if settings.redis_enabled else open_store(settings)
    except ChatAuthzError as exc:
        raise CommandError(EXIT_USAGE, f"chatauthz import: cannot open the store: {exc.message}") from exc
    try:
        state = store.load()
        read_at = state.revision
        tx = WriteContext(Engine(policy), state)
        planned: list[list[Op]] = []  # per good record
        for line_no, record in records:
            try:
                ops = plan_record(tx, record)
            except ChatAuthzError as exc:
                problems.append((line_no, exc.message))
                continue
            for op in ops:
                state.apply(op)
            planned.append(ops)
        problems.sort()
        for line_no, message in problems[:MAX_SHOWN]:
            print(f"{name}:{line_no}: {message}", file=sys.stderr)
        if len(problems) > MAX_SHOWN:
            print(f"... and {len(problems) - MAX_SHOWN} more bad lines", file=sys.stderr)
        if problems and not args.partial:
            print(f"chatauthz import: {len(problems)} bad line(s) in {name}; nothing was written "
                  "(--partial writes the good lines)", file=sys.stderr)
            return EXIT_BAD_LINES
        revisions = commit(store, planned, args.batch_size, read_at)
    except ChatAuthzError as exc:
        raise CommandError(EXIT_USAGE, f"chatauthz import: {exc.message}") from exc
    finally:
        store.close()
    seconds = time.perf_counter() - started
    ops_count = sum(len(ops) for ops in planned)
    where = f"revisions {revisions[0]}..{revisions[-1]}" if revisions else "nothing to write: all already so"
    print(f"imported {len(planned)} record(s) of {name} as {ops_count} op(s) in {len(revisions)} revision(s) "
          f"({where}) in {seconds:.2f}s, {len(records) / max(seconds, 1e-9):,.0f} records/s")
    return EXIT_BAD_LINES if problems else 0


def read_records(file: str, name: str) -> tuple[list[tuple[int, Record]], list[tuple[int, str]]]:
    records: list[tuple[int, Record]] = []
    problems: list[tuple[int, str]] = []
    try:
        stream: IO[bytes] = sys.stdin.buffer if file == "-" else open(file, "rb")  # noqa: SIM115
    except OSError as exc:
        raise CommandError(EXIT_USAGE, f"chatauthz import: cannot read {name}: {exc.strerror}") from exc
    with stream:
        for line_no, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                records.append((line_no, parse_record(line)))
            except ChatAuthzError as exc:
                problems.append((line_no, exc.message))
    return records, problems


def batches(planned: list[list[Op]], size: int) -> Iterator[list[Op]]:
    """About `size` ops each, never splitting one record's ops."""
    batch: list[Op] = []
    for ops in planned:
        batch += ops
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def commit(store: Any, planned: list[list[Op]], size: int, read_at: int) -> list[int]:
    """Write the batches, one revision each; stop if anyone else wrote since read_at."""
    revisions: list[int] = []
    expected = read_at
    for batch in batches(planned, size):
        def plan(batch: list[Op] = batch, expected: int = expected) -> list[Op]:
            if store.changes_since(expected):
                done = f" (revisions {revisions[0]}..{revisions[-1]} were written)" if revisions else ""
                raise ConflictError(f"the store changed while the file was imported{done}; run the import "
                                    "again: it writes only what is still missing", code="ERR_STORE_CHANGED")
            return batch
        expected, _ = store.write(plan, "import")
        revisions.append(expected)
    return revisions

