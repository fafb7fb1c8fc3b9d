"""`chatauthz import FILE|-`: bulk-load users' roles, groups, members and bans (NDJSON, one
record a line: see sidecar/importing.py) into the embedded store or Redis.

Every line is read and planned as the API would (on the store's state plus the lines before
it) before anything is written. A bad line is reported as FILE:LINE: message and, unless
--partial, nothing of the file is written (exit 3). Then the ops are committed in batches of
about --batch-size ops, each one revision of the journal (sidecars catch up as from any write);
a batch never splits a record. Each batch first checks that nobody else wrote since the
import read the store (else it stops: run it again; a re-run writes only what is missing,
unless the file adds a member it later bans: see docs/operations.md).
Exit 0 all imported, 2 usage or a store that cannot be used, 3 bad lines.
"""
from __future__ import annotations

import argparse
import bisect
import itertools
import queue
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, Any, NamedTuple

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
from sidecar.importing import MEMBER, OPS_PER_CODE, Block, Planner, parse_block, planned_runs, read_blocks
from sidecar.state import Op
from sidecar.stores.base import BulkWritable, Runs, ops_of_runs, runs_json, store_changed

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
    try:
        stream: IO[bytes] = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")  # noqa: SIM115
    except OSError as exc:
        raise CommandError(EXIT_USAGE, f"chatauthz import: cannot read {name}: {exc.strerror}") from exc
    try:  # Redis: no seen-revision records of its own (those are a sidecar's, for its recovery)
        store = redisconn.open_store(settings) if settings.redis_enabled else open_store(settings)
    except (ChatAuthzError, OSError) as exc:
        stream.close()
        why = exc.message if isinstance(exc, ChatAuthzError) else f"{exc.strerror or exc}: {exc.filename or ''}"
        raise CommandError(EXIT_USAGE, f"chatauthz import: cannot open the store: {why}") from exc
    try:
        with stream, tempfile.TemporaryFile(prefix="chatauthz-import-") as spool:
            state = store.load()
            read_at = state.revision
            checked = check_file(stream, name, Planner(WriteContext(Engine(policy), state)), spool)
            del state  # the indexes of pass 1: pass 2 needs only the spool
            for line_no, message in checked.shown:
                print(f"{name}:{line_no}: {message}", file=sys.stderr)
            if checked.bad > len(checked.shown):
                print(f"... and {checked.bad - len(checked.shown)} more bad lines", file=sys.stderr)
            if checked.bad and not args.partial:
                print(f"chatauthz import: {checked.bad} bad line(s) in {name}; nothing was written "
                      "(--partial writes the good lines)", file=sys.stderr)
                return EXIT_BAD_LINES
            checked_at = time.perf_counter()
            spool.seek(0)
            counted = Counted(planned_batches(spool, args.batch_size))
            revisions = commit(store, counted, read_at)
    except ChatAuthzError as exc:
        raise CommandError(EXIT_USAGE, f"chatauthz import: {exc.message} ({exc.code})") from exc
    finally:
        store.close()
    done = time.perf_counter()
    seconds = done - started
    where = f"revisions {revisions[0]}..{revisions[-1]}" if revisions else "nothing to write: all already so"
    print(f"imported {checked.records - checked.refused} record(s) of {name} as {counted.ops} op(s) in "
          f"{len(revisions)} revision(s) ({where}) in {seconds:.2f}s, {checked.records / max(seconds, 1e-9):,.0f} "
          f"records/s (read and checked in {checked_at - started:.2f}s, written in {done - checked_at:.2f}s)")
    return EXIT_BAD_LINES if checked.bad else 0


class Checked(NamedTuple):
    records: int  # lines that are records (well-formed), refused or not
    refused: int  # records the plans refuse
    bad: int      # bad lines: not records, or refused
    shown: list[tuple[int, str]]  # the first MAX_SHOWN of them, in line order


def check_file(stream: IO[bytes], name: str, planner: Planner, spool: IO[bytes]) -> Checked:
    """Pass 1: every line read and decided (planner's state moves on as the ops would move it);
    each block's records and decisions go to the spool, for pass 2 to write."""
    records = refused = bad = 0
    shown: list[tuple[int, str]] = []
    for first, raw in read_blocks(stream):
        block = parse_block(raw, first)
        codes, refusals = planner.plan(block)
        records += len(block.kinds)
        refused += len(refusals)
        problems = block.problems + refusals
        bad += len(problems)
        if len(shown) < MAX_SHOWN and problems:
            shown += sorted(problems)[:MAX_SHOWN - len(shown)]
        if any(codes):
            write_spooled(spool, block, codes, planner.scopes)
    return Checked(records, refused, bad, shown)


SPOOL_HEADER = struct.Struct("<III")  # records, member scopes, bytes of text


def write_spooled(spool: IO[bytes], block: Block, codes: bytes, scopes: Mapping[str, str]) -> None:
    """One block as kinds, codes, then its ids and scopes as lines of text (ids hold no newline;
    a scope that is not one, in a refused record, is written empty)."""
    given = block.scopes if block.lines is None else [s if type(s) is str and s in scopes else "" for s in block.scopes]
    text = "\n".join(block.xs + block.ys + given).encode()
    spool.write(SPOOL_HEADER.pack(len(block.kinds), len(given), len(text)))
    spool.write(bytes(block.kinds))
    spool.write(codes)
    spool.write(text)


def planned_batches(spool: IO[bytes], size: int) -> Iterator[tuple[Runs, int]]:
    """Pass 2: the ops of every record pass 1 planned, in order, as runs, in batches of `size`
    ops (one more when the cut would split a record's two ops), with their count."""
    batch: Runs = []
    count = 0
    while header := spool.read(SPOOL_HEADER.size):
        records, scopes, length = SPOOL_HEADER.unpack(header)
        kinds, codes = spool.read(records), spool.read(records)
        text = spool.read(length).decode().split("\n")
        block = Block(0, list(kinds), text[:records], text[records:2 * records], text[2 * records:], None, [])
        assert len(block.scopes) == scopes
        while True:
            per_record = codes.translate(OPS_PER_CODE)
            planned = sum(per_record)
            if count + planned < size:
                _extend(batch, planned_runs(block, codes))
                count += planned
                break
            cut = bisect.bisect_left(list(itertools.accumulate(per_record)), size - count) + 1  # records
            members = kinds[:cut].count(MEMBER)
            _extend(batch, planned_runs(Block(0, block.kinds[:cut], block.xs[:cut], block.ys[:cut],
                                              block.scopes[:members], None, []), codes[:cut]))
            yield batch, count + sum(per_record[:cut])
            batch, count = [], 0
            kinds, codes = kinds[cut:], codes[cut:]
            block = Block(0, block.kinds[cut:], block.xs[cut:], block.ys[cut:], block.scopes[members:], None, [])
    if count:
        yield batch, count


def _extend(batch: Runs, runs: Runs) -> None:
    """Append runs to a batch's (a run of the op its last run is of joins it)."""
    for name, rows in runs:
        if batch and batch[-1][0] == name:
            batch[-1][1].extend(rows)
        else:
            batch.append((name, rows))


class Counted:
    """Batches of ops, counted as they go by."""

    def __init__(self, batches: Iterable[tuple[Runs, int]]) -> None:
        self.batches, self.ops = batches, 0

    def __iter__(self) -> Iterator[tuple[Runs, int]]:
        for batch, count in self.batches:
            self.ops += count
            yield batch, count


def commit(store: Any, batches: Iterable[tuple[Runs, int]], read_at: int) -> list[int]:
    """Write the batches (runs, their ops), one revision each; stop if anyone else wrote since
    read_at. A BulkWritable store takes them in calls of its bulk_call_ops ops or more."""
    revisions: list[int] = []
    expected = read_at
    try:
        if isinstance(store, BulkWritable):
            _write_behind(store, _grouped(batches, store.bulk_call_ops), read_at, revisions)
            return revisions
        for batch, _ in batches:
            def plan(batch: Runs = batch, expected: int = expected) -> list[Op]:
                if store.changes_since(expected):
                    raise store_changed(None, expected)
                return ops_of_runs(batch)
            expected, _ = store.write(plan, "import")
            revisions.append(expected)
    except ConflictError as exc:
        if exc.code != "ERR_STORE_CHANGED":
            raise
        done = (f"; this import wrote revisions {revisions[0]}..{revisions[-1]} before it stopped" if revisions
                else "; this import wrote nothing")
        raise ConflictError(f"the store changed while the file was imported ({exc.message}){done}. Run the "
                            "import again: it writes only what is still missing (a file that adds a member it "
                            "later bans fails instead: see docs/operations.md)", code="ERR_STORE_CHANGED") from exc
    return revisions


def _grouped(batches: Iterable[tuple[Runs, int]], ops: int) -> Iterator[list[Runs]]:
    """The batches in lists of at least `ops` ops (the last: what is left)."""
    group: list[Runs] = []
    count = 0
    for batch, planned in batches:
        group.append(batch)
        count += planned
        if count >= ops:
            yield group
            group, count = [], 0
    if group:
        yield group


def _write_behind(store: BulkWritable, groups: Iterable[list[Runs]], read_at: int, revisions: list[int]) -> None:
    """store.write_runs of each group, in order, in a thread of its own, while this one reads the
    next group from the spool and writes its journal entries (a store's driver lets go of the
    GIL while SQLite or Redis works);
    the revisions written go to `revisions`. The first failure stops the writes and is raised
    here; nothing after it is written."""
    queued: queue.Queue[tuple[list[Runs], list[str]] | None] = queue.Queue(maxsize=1)  # memory: one group ahead
    failed: list[BaseException] = []

    def write() -> None:
        expected = read_at
        try:
            while (item := queued.get()) is not None:
                revisions.extend(store.write_runs(item[0], "import", expected, item[1]))
                expected = revisions[-1] if revisions else expected
        except BaseException as exc:  # handed to the reading thread, which raises it
            failed.append(exc)
            while queued.get() is not None:  # let the reader finish its puts
                pass
    writer = threading.Thread(target=write, name="chatauthz-import-writer", daemon=True)
    writer.start()
    try:
        for group in groups:
            if failed:
                break
            queued.put((group, [runs_json(runs) for runs in group]))  # the journal entries made here
    finally:
        queued.put(None)
        writer.join()
    if failed:
        raise failed[0]
