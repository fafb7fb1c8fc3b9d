"""The composition root: policy + store + engine + runtime state. Knows nothing of Flask.

Decisions run on in-memory state under a short lock and never wait on store I/O (except a
request that asks for a newer revision). Catching up reads the store outside the lock and
applies under it; a full resync builds a new state aside and swaps it in. Writes run their
plan inside the store's exclusive transaction on caught-up state, then apply the committed ops.
"""
from __future__ import annotations

import bisect
import functools
import itertools
import logging
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from sidecar.audit import DecisionLog
from sidecar.background import Background
from sidecar.engine import GROUP_RULES, OWNER, AuthzRequest, Decision, Engine
from sidecar.errors import BadRequestError, ChatAuthzError, NotFoundError, PolicyError, StoreError
from sidecar.policy import PolicySet
from sidecar.readset import ReadView
from sidecar.reload import Files
from sidecar.state import Op, RuntimeState, with_before
from sidecar.stores.base import (
    DataLoss,
    EntityReader,
    Facts,
    Follower,
    PlanRun,
    Polled,
    ReadTracking,
    RecoveryPending,
    ResyncNeeded,
    SelfChecking,
    Store,
    Subscribable,
)
from sidecar.validation import Token, format_token
from sidecar.wire import Check
from sidecar.workingset import MissingFacts, WorkingSet

log = logging.getLogger("chatauthz.core")
STALE_CODE = "ERR_STATE_TOO_STALE"
NOT_LOADED_CODE = "ERR_STATE_NOT_LOADED"
EPOCH_MISMATCH_CODE = "ERR_REVISION_EPOCH_MISMATCH"
Wanted = int | Token | list[int | Token]  # what atLeastRevision asks for (a batch: all of them)
R = TypeVar("R")
SCAN_LIMIT = 10_000  # candidates a list question looks at per call; nextCursor resumes after them
CAPABILITIES_MEMO = 512  # capabilities answers kept per process (~15 kB each), each valid for one revision
FACT_ROUNDS = 8  # reads from the store one answer may make (a working set; each learns what was missing)
T = TypeVar("T")
W = TypeVar("W", bound=tuple[Any, ...])  # a store's commit: (revision, ops, ...)


@dataclass(frozen=True)
class WriteContext:
    """What a write plan reads, all taken inside the write's lock: the engine (and so the
    policy) in force, and the state caught up to the store's last commit."""
    engine: Engine
    state: RuntimeState

    @property
    def policy(self) -> PolicySet:
        return self.engine.policy


@dataclass(frozen=True)
class Written(Generic[R]):
    """A committed (or unchanged) write: its revision and token, the plan's result, and what
    `after` read at that revision."""
    revision: int
    token: str
    result: R
    shown: Any = None


class Watcher(Protocol):
    """Watches the policy files (a Background) and can reload them now (SIGHUP)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def reload_now(self) -> None: ...


class Gauges(Protocol):
    """Keeps gauges current from stats() (a Background); update() before a scrape."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def update(self) -> None: ...


class Stats(NamedTuple):
    """What this sidecar's gauges and counters show."""
    revision: int
    staleness_s: float
    policy_hash: str
    policy_invalid: bool
    data_loss: DataLoss | None
    reload_failures: int
    store_errors: int
    data_loss_events: int
    decision_log_dropped: int


@dataclass(frozen=True)
class Readiness:
    """Can this sidecar answer from current state? serving=False: take it out of rotation
    (store unreachable or replaced, sync down, past --max-staleness, Redis lost writes not yet
    written back). status "degraded" with serving=True: it answers correctly but something
    needs an operator (invalid policy files on disk, failing disk writes, a past data loss)."""
    serving: bool
    reasons: list[str]
    details: dict[str, Any]

    @property
    def status(self) -> str:
        return "degraded" if self.reasons else "ready"

    def to_dict(self) -> dict[str, Any]:
        body = {**self.details, "status": self.status}
        if self.reasons:
            body["reasons"] = self.reasons
        return body


class Sidecar:
    """Decisions, writes and readiness over one policy and one store. Its collaborators come in
    through the constructor (sidecar.compose builds them from Settings); what runs in the
    background (a follower of a Subscribable store, the policy watcher, the gauges, the decision
    log) is started by start() and stopped by stop()."""

    def __init__(self, policy: PolicySet, store: Store, *, revision_wait_s: float = 2.0,
                 max_staleness_s: float | None = None, revision_waiters: int = 2,
                 policy_loader: Callable[[Files | None], tuple[PolicySet, list[str]]] | None = None,
                 policy_problems: list[str] | None = None, decision_log: DecisionLog | None = None,
                 on_decision: Callable[[dict[str, Any], float], None] | None = None,
                 on_write: Callable[[str], None] | None = None,
                 watcher: Callable[[Callable[[Files], object]], Watcher] | None = None,
                 gauges: Callable[[Callable[[], Stats]], Gauges] | None = None,
                 sync_interval_s: float = 1.0, cache_entries: int | None = None) -> None:
        self.engine = Engine(policy)  # swapped whole on reload; a decision reads it once
        self.policy_loader = policy_loader
        self.policy_problems: list[str] = list(policy_problems or [])  # why the files on disk are not served
        self.reload_failures = 0
        self.decision_log = decision_log
        self.store = store
        self._polled = store if isinstance(store, Polled) else None  # read on every request
        self.revision_wait_s = revision_wait_s
        self._waiters = threading.BoundedSemaphore(revision_waiters)  # 0: never wait
        self.max_staleness_s = max_staleness_s
        self.synced = isinstance(store, Subscribable)  # a follower keeps this state current
        self._lock = threading.RLock()        # guards self.state for decisions and applies
        self._write_lock = threading.Lock()   # one writer at a time in this process
        self._catch_up_lock = threading.Lock()
        self.loaded = True
        if cache_entries is not None and not isinstance(store, EntityReader):
            raise ValueError(f"{type(store).__name__} cannot back a working set")
        self.cache_entries = cache_entries  # None: hold the whole state
        self.facts_read = 0  # facts read from the store on a miss (a working set)
        try:
            self.state: RuntimeState = self._load()
        except StoreError as exc:
            if not self.synced and exc.code != "ERR_STORE_REPLACED":  # gone under a running server: deny
                raise  # the embedded file must open; Redis may come later
            log.error("starting without state: %s; denying until the first load", exc.message)
            self.state, self.loaded = RuntimeState(), False
        self.last_heard = time.monotonic()
        self.store_error: str | None = None
        self.on_decision = on_decision  # metrics: the decision body, seconds
        self.on_write = on_write  # metrics: committed | unchanged | refused | failed
        self.store_errors = 0
        self.data_loss: DataLoss | None = None  # the last time the store lost writes we held
        self.data_loss_events = 0
        self.past_epochs: set[str] = set()  # epochs this process left: their tokens never match
        self._sorted_groups: tuple[RuntimeState, int, list[str]] | None = None
        # capabilities answers by (inputs, state and its revision, engine): a UI asks again and again
        self._capabilities_memo: OrderedDict[tuple[Any, ...], dict[str, Any]] = OrderedDict()
        self._ids = itertools.count(1)
        self._id_prefix = f"{secrets.token_hex(4)}{os.getpid():x}"
        self.sync: Follower | None = store.follow(self.catch_up, sync_interval_s) \
            if isinstance(store, Subscribable) else None
        self.watcher = watcher(self.reload_policy) if watcher is not None else None
        self.gauges = gauges(self.stats) if gauges is not None else None

    def start(self) -> None:
        """Start what runs in the background (each part once)."""
        for part in self._background():
            part.start()

    def stop(self) -> None:
        """Stop it again, last started first (bounded)."""
        for part in reversed(self._background()):
            part.stop()

    def _background(self) -> list[Background]:
        parts: list[Background | None] = [self.decision_log, self.sync, self.watcher, self.gauges]
        return [part for part in parts if part is not None]

    def reload_from_disk(self) -> None:
        """SIGHUP: load the policy files once they have settled, changed or not."""
        if self.watcher is not None:
            self.watcher.reload_now()

    # -- what the views and gauges read ------------------------------------------------------
    def readiness(self) -> Readiness:
        details: dict[str, Any] = {"policyHash": self.policy.content_hash}
        problems: list[str] = []  # not serving
        warnings: list[str] = []  # degraded but serving correctly: stay in the load balancer
        if not self.loaded:
            problems.append("the state has not been loaded from the store yet")
        if self.sync is not None:
            details["sync"] = {"status": self.sync.status, "message": self.sync.message}
            if self.sync.status != "OK":
                problems.append(f"sync with Redis is {self.sync.status}")
        else:
            try:
                self.refresh()
                warning = self.store.check() if isinstance(self.store, SelfChecking) else None
                if warning:  # writes fail (say a full disk) but decisions are right: same for all workers
                    warnings.append(warning)
            except ChatAuthzError as exc:
                problems.append(exc.message)
        if self.policy_problems:
            # Every replica reads the same files: failing readiness here would take all of them out
            # while each still serves the last good policy.
            warnings.append(f"the policy files on disk are invalid ({len(self.policy_problems)} problem(s)); "
                            f"still serving {self.policy.content_hash}")
            details["policyProblems"] = self.policy_problems
        loss = self.data_loss
        if loss is not None:  # loud until restart: an operator must learn that the store lost writes
            said = f"the store lost revisions {loss.first}..{loss.last} of epoch {loss.epoch}: {loss.detail}"
            if loss.status == "pending":
                problems.append(said)
            elif loss.restored_to is not None and loss.restored_to < loss.last:
                warnings.append(f"{said}; revisions {loss.restored_to + 1}..{loss.last} are lost for good")
            else:
                warnings.append(f"{said}; all written back")
            details["dataLoss"] = loss.to_dict()
        staleness = self.staleness_s()
        if self.max_staleness_s is not None and staleness > self.max_staleness_s:
            problems.append(f"state is {staleness:.1f}s stale, past --max-staleness")
        state = self.state
        details.update(revision=state.revision, token=format_token(state.epoch, state.revision),
                       stalenessSeconds=round(staleness, 3))
        return Readiness(not problems, problems + warnings, details)

    def journal(self, since: int, offset: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
        """The change log after `since`: (total, entries {revision, at, actor, ops})."""
        return self.store.journal(since, offset, limit)

    def stats(self) -> Stats:
        """For the gauges; the embedded store is looked at first (what other workers committed)."""
        if self._polled is not None:
            try:
                self.refresh()
            except StoreError:
                pass  # counted in store_errors
        return Stats(self.state.revision, self.staleness_s(), self.policy.content_hash, bool(self.policy_problems),
                     self.data_loss, self.reload_failures, self.store_errors, self.data_loss_events,
                     self.decision_log.dropped if self.decision_log is not None else 0)

    @property
    def policy(self) -> PolicySet:
        return self.engine.policy

    def reload_policy(self, files: Files | None = None) -> bool:
        """Build the policy of `files` (default: the files on disk once settled) aside and swap it
        in; a broken policy never replaces a good one."""
        if self.policy_loader is None:
            return False
        try:
            policy, problems = self.policy_loader(files)
            if problems:
                raise PolicyError(problems)
            engine = Engine(policy)
            with self._lock:
                try:
                    engine.decide(AuthzRequest("chatauthz-warmup", next(iter(policy.actions))), self.state)
                except MissingFacts:
                    pass  # a working set: the warm-up user is not held, and the policy compiled
        except PolicyError as exc:
            self.reload_failures += 1
            self.policy_problems = exc.problems
            log.error("policy change refused; still serving %s:\n  %s", self.policy.content_hash,
                      "\n  ".join(exc.problems))
            return False
        except ChatAuthzError:
            pass  # the warm-up request itself was refused (e.g. the action needs a group): fine
        self.engine = engine
        self.policy_problems = []
        log.info("policy reloaded: now serving %s", policy.content_hash)
        return True

    # -- keeping up with the store ---------------------------------------------------------
    def refresh(self) -> None:
        """Embedded store: apply what other workers committed (cheap when nothing did)."""
        if self._polled is None:
            return  # a follower keeps the state current
        try:
            if self._polled.changed(self.state.revision):
                self.catch_up()
            if self.store_error is not None:
                self.store_error = None
        except StoreError as exc:
            self.store_error = exc.message
            self.store_errors += 1
            raise

    def catch_up(self) -> None:
        """Bring state to the store's revision: replay the journal, or resync in full."""
        with self._catch_up_lock:
            self._catch_up_locked()

    def _catch_up_locked(self) -> None:
        try:
            entries = self.store.changes_since(self.state.revision)
            with self._lock:
                self._apply_entries(entries)
        except ResyncNeeded as why:
            log.warning("full resync: %s", why)
            loss = self.store.recover(self.state)
            if loss is not None:
                self._note_loss(loss)
                if loss.status == "pending":
                    raise RecoveryPending(f"the store lost revisions {loss.first}..{loss.last} of epoch "
                                          f"{loss.epoch}: {loss.detail}") from None
            fresh = self._load()  # a working set starts empty again: no reload of the world
            with self._lock:
                if fresh.epoch != self.state.epoch and self.state.epoch:
                    self.past_epochs.add(self.state.epoch)
                self.state = fresh
                self.loaded = True
        self.last_heard = time.monotonic()

    def _load(self) -> RuntimeState:
        """The whole state; with a working set, the policy part and an empty entity cache."""
        if self.cache_entries is None:
            return self.store.load()
        reader: EntityReader = self.store  # type: ignore[assignment]
        return WorkingSet(reader.load_policy(), reader, self.cache_entries)

    def _with_facts(self, run: Callable[[], T], wanted: Facts | Callable[[], Facts] | None = None) -> T:
        """run() under the lock. With a working set that lacks a fact run() reads (MissingFacts),
        what it lacked and `wanted` (what the answer is known to read) are read from the store
        outside the lock, in one round trip, and run() tried again; a store that cannot answer
        is a StoreError. A cache hit costs nothing more than the lock."""
        with self._lock:
            try:
                return run()
            except MissingFacts as exc:
                if self.cache_entries is None:
                    raise
                missing = exc.facts
        ahead = wanted() if callable(wanted) else wanted
        ahead = missing if ahead is None else Facts([*ahead.users, *missing.users], [*ahead.groups, *missing.groups],
                                                    [*ahead.memberships, *missing.memberships])
        for _ in range(FACT_ROUNDS):
            try:
                return self._read_facts(ahead, run)
            except MissingFacts as exc:
                ahead = exc.facts
        raise StoreError(f"the facts this answer needs kept changing in the store ({FACT_ROUNDS} reads)")

    def _fetching(self) -> AbstractContextManager[None]:
        """Under the lock, for a plan or a view: a working set reads a miss at once (one fact
        at a time, as they find what they read) instead of raising."""
        state = self.state
        if isinstance(state, WorkingSet):
            reader: EntityReader = self.store  # type: ignore[assignment]
            return state.fetching(reader.read_facts)
        return nullcontext()

    def _read_facts(self, facts: Facts, run: Callable[[], T]) -> T:
        """Read what the working set lacks of `facts`, absorb it at the state's revision
        (catching up first when the store is ahead; reading again when the read is too old), and
        run() in the same hold of the lock, so nothing it read can be evicted before it is used."""
        reader: EntityReader = self.store  # type: ignore[assignment]
        with self._lock:
            state = self.state
            missing = state.missing(facts) if isinstance(state, WorkingSet) else Facts([], [], [])
            if not (missing.users or missing.groups or missing.memberships):
                return run()
        read = reader.read_facts(missing)
        for _ in range(FACT_ROUNDS):
            with self._lock:
                state = self.state
                outcome = state.absorb(missing, read, facts) if isinstance(state, WorkingSet) else "ok"
                if outcome == "ok":
                    self.facts_read += len(missing.users) + len(missing.groups) + len(missing.memberships)
                    return run()
            if outcome == "behind":
                self.catch_up()
            else:
                read = reader.read_facts(missing)
        raise StoreError(f"could not bring the facts read from the store to revision {self.state.revision}")

    def _note_loss(self, loss: DataLoss) -> None:
        known = self.data_loss
        if known is None or (known.epoch, known.first) != (loss.epoch, loss.first):
            self.data_loss_events += 1
            log.error("DATA LOSS: the store lost revisions %s..%s of epoch %s: %s", loss.first, loss.last,
                      loss.epoch, loss.detail)
        if loss.status == "written":
            log.error("the store had lost its data; this sidecar wrote its state back (revision %s, epoch %s)",
                      loss.restored_to, loss.new_epoch)
        self.data_loss = loss

    def _apply_entries(self, entries: list[tuple[int, list[Op]]]) -> None:
        for revision, ops in entries:
            if revision > self.state.revision:  # a writer may have applied it already
                self.state.apply_all(ops, revision)

    def staleness_s(self) -> float:
        """Seconds since the store was last heard from; 0 for the embedded store, which every
        request reads (its state is never older than the request)."""
        return time.monotonic() - self.last_heard if self.synced else 0.0

    # -- decisions -------------------------------------------------------------------------
    def decide(self, request: AuthzRequest, at_least_revision: int | Token | None = None) -> dict[str, Any]:
        """One decision as the API's body. With at_least_revision, answer only from state at
        least that new: wait (bounded) for it, else refuse (ChatAuthzError)."""
        self._prepare_one(at_least_revision)
        return self._decide_prepared(request, at_least_revision)

    def decided(self, request: AuthzRequest, at_least_revision: int | Token | None = None
                ) -> tuple[Decision, str, str]:
        """decide() before it is a body (Embedded): the decision, its token and its decision id.
        The metrics and the decision log, when set, see the body decide() would answer."""
        self._prepare_one(at_least_revision)
        decision, epoch, stale, started = self._decision(request, at_least_revision)
        token, decision_id = format_token(epoch, decision.revision), self._next_decision_id()
        if self.on_decision is not None or self.decision_log is not None:
            self._observe(request, self._body(decision, token, decision_id, stale), started)
        return decision, token, decision_id

    def _prepare_one(self, at_least_revision: int | Token | None) -> None:
        if self._polled is not None:
            self._refresh_or_warn()
        if at_least_revision is not None and not self.reached(at_least_revision) and not self._never(at_least_revision):
            self.wait_for_revision(at_least_revision)

    def decide_many(self, checks: Sequence[Check | ChatAuthzError]) -> list[dict[str, Any] | ChatAuthzError]:
        """A batch: one look at the store and one bounded wait for all its checks; each answer
        is a decision body or the error of that check (an error given in is passed through)."""
        self._prepare([check[1] for check in checks if not isinstance(check, ChatAuthzError)
                       and check[1] is not None])
        if self.cache_entries is not None:  # the whole batch's facts in one read
            requests = [check[0] for check in checks if not isinstance(check, ChatAuthzError)]
            wanted = [facts_for(r.uid, r.guid, r.target) for r in requests]
            try:
                self._read_facts(Facts([u for f in wanted for u in f.users], [g for f in wanted for g in f.groups],
                                       [m for f in wanted for m in f.memberships]), lambda: None)
            except StoreError:
                pass  # each check denies with the reason
        results: list[dict[str, Any] | ChatAuthzError] = []
        for check in checks:
            if isinstance(check, ChatAuthzError):
                results.append(check)
                continue
            try:
                results.append(self._decide_prepared(*check))
            except ChatAuthzError as exc:
                results.append(exc)
        return results

    def _prepare(self, wanted: list[int | Token] | None) -> None:
        """Before deciding: apply what the embedded store committed (an unreadable store is
        decided from the last state), and wait once, bounded, for the revisions asked for."""
        if self._polled is not None:
            self._refresh_or_warn()
        if wanted and not self.reached(wanted):
            self.wait_for_revision(wanted)

    def _refresh_or_warn(self) -> None:
        try:
            self.refresh()
        except StoreError:
            log.warning("store unreadable; deciding from revision %s", self.state.revision)

    def _decide_prepared(self, request: AuthzRequest, at_least_revision: int | Token | None) -> dict[str, Any]:
        decision, epoch, stale, started = self._decision(request, at_least_revision)
        body = self._body(decision, format_token(epoch, decision.revision), self._next_decision_id(), stale)
        self._observe(request, body, started)
        return body

    def _decision(self, request: AuthzRequest, at_least_revision: int | Token | None
                  ) -> tuple[Decision, str, float, float]:
        """(decision, epoch, staleness, perf_counter at the start when timed) on prepared state."""
        if at_least_revision is not None and not self.reached(at_least_revision):
            raise self._not_reached(at_least_revision)
        stale = self.staleness_s() if self.synced else 0.0
        engine = self.engine
        started = time.perf_counter() if self.on_decision is not None else 0.0
        if self.cache_entries is None:  # the hot path: no closure, no fact bookkeeping
            with self._lock:
                decision, epoch = self._decide_locked(engine, request, stale, at_least_revision)
        else:
            try:
                decision, epoch = self._with_facts(
                    functools.partial(self._decide_locked, engine, request, stale, at_least_revision),
                    lambda: facts_for(request.uid, request.guid, request.target))
            except StoreError as exc:  # fail closed: what the store holds could not be read
                with self._lock:
                    decision, epoch = self._refuse(engine, request, exc.code, (
                        f"this sidecar could not read the facts of this request from its store ({exc.message}); "
                        "it denies until it can")), self.state.epoch
        return decision, epoch, stale, started

    def _body(self, decision: Decision, token: str, decision_id: str, stale: float) -> dict[str, Any]:
        """The API's decision body."""
        body = decision.to_dict()
        body["decisionId"] = decision_id
        body["token"] = token
        if self.synced:
            body["stalenessSeconds"] = round(stale, 3)
        return body

    def _observe(self, request: AuthzRequest, body: dict[str, Any], started: float) -> None:
        """The decision's metrics and its decision log line (whichever is set)."""
        if self.on_decision is not None:
            self.on_decision(body, time.perf_counter() - started)
        if self.decision_log is not None:
            self.decision_log.record(request, body)

    def _decide_locked(self, engine: Engine, request: AuthzRequest, stale: float,
                       at_least_revision: int | Token | None) -> tuple[Decision, str]:
        """The decision and its epoch, under the lock (fail closed on untrusted state)."""
        untrusted = self._untrusted(stale) if not self.loaded or self.max_staleness_s is not None else None
        if untrusted is not None:
            return self._refuse(engine, request, *untrusted), self.state.epoch
        if at_least_revision is not None and not self.reached(at_least_revision):
            raise self._not_reached(at_least_revision)  # a resync swapped the state meanwhile
        return engine.decide(request, self.state), self.state.epoch

    def _untrusted(self, stale: float) -> tuple[str, str] | None:
        """(code, reason) when the state cannot be trusted to decide: fail closed."""
        if not self.loaded:
            return NOT_LOADED_CODE, "this sidecar has not loaded its state from the store yet; it denies until it has"
        if self.max_staleness_s is not None and stale > self.max_staleness_s:
            return STALE_CODE, (f"this sidecar last heard from its store {stale:.1f}s ago, more than the "
                                f"{self.max_staleness_s}s allowed (--max-staleness); it denies until it catches up")
        return None

    # -- beyond one decision: capabilities and list questions ---------------------------------
    def capabilities(self, uid: str, guid: str | None = None, target: str | None = None,
                     context: Mapping[str, Any] | None = None,
                     at_least_revision: int | Token | None = None) -> dict[str, Any]:
        """Every action of the catalogue decided for uid (in guid, on target), from one state:
        each is what /authorize answers for it (the decision, or its 400), plus the constraint
        values that apply and, for an action on a member asked without a target, the scopes uid
        may act on or give. What a UI renders its buttons from."""
        self._prepare(None if at_least_revision is None else [at_least_revision])
        facts: Mapping[str, Any] = context if context is not None else {}
        stale = self.staleness_s()
        engine = self.engine
        engine.validate_context(facts)  # a fact no request may carry is the body's 400, as on /authorize

        def answer() -> dict[str, Any]:
            actions: dict[str, Any] = {}
            if at_least_revision is not None and not self.reached(at_least_revision):
                raise self._not_reached(at_least_revision)
            state, untrusted = self.state, self._untrusted(stale)
            key = _memo_key(uid, guid, target, facts, state, engine, untrusted)
            known = self._capabilities_memo.get(key) if key is not None else None
            if known is not None:
                return known
            scope = _scope_in(state, uid, guid)
            group_actions = engine.group_actions
            role_key = _role_key(key, uid, target, state, engine)
            app_wide = self._capabilities_memo.get(role_key) if role_key is not None else None
            fresh: dict[str, Any] = {}
            for name, action in engine.policy.actions.items():
                if app_wide is not None and name not in group_actions:
                    actions[name] = app_wide[name]  # decided for another user of this role, at this revision
                    continue
                # an app-wide action is decided app-wide (with the guid, /authorize would refuse it: a 400)
                request = AuthzRequest(uid, name, guid if name in group_actions else None, target, facts)
                entry: dict[str, Any]
                try:
                    decision = (engine.decide(request, state) if untrusted is None
                                else self._refuse(engine, request, *untrusted))
                except ChatAuthzError as exc:
                    entry = {"error": exc.to_dict()}
                else:  # its revision and policy hash are the same for all: given once
                    entry = decision.to_dict(with_state=False)
                    entry["constraints"] = engine.constraints(request, decision, state) if untrusted is None else []
                if action.target_required and target is None:
                    entry["targets"] = engine.target_scopes(request, state, scope if untrusted is None else None)
                actions[name] = entry
                if name not in group_actions:
                    fresh[name] = entry
            body: dict[str, Any] = {
                "uid": uid, "guid": guid, "target": target, "role": state.role_of(uid), "scope": scope,
                "revision": state.revision, "token": format_token(state.epoch, state.revision),
                "policyHash": engine.policy.content_hash, "actions": actions}
            memo = self._capabilities_memo
            for known_key, answer_kept in ((key, body), (role_key, fresh if app_wide is None else None)):
                if known_key is not None and answer_kept is not None:
                    memo[known_key] = answer_kept
                    if len(memo) > CAPABILITIES_MEMO:
                        memo.popitem(last=False)
            return body
        return self._with_staleness(dict(self._with_facts(answer, lambda: facts_for(uid, guid, target))), stale)

    def _with_staleness(self, body: dict[str, Any], stale: float) -> dict[str, Any]:
        if self.synced:
            body["stalenessSeconds"] = round(stale, 3)
        return body

    def groups_where(self, uid: str, action: str, context: Mapping[str, Any] | None = None, *,
                     cursor: str | None = None, limit: int = 100,
                     at_least_revision: int | Token | None = None) -> dict[str, Any]:
        """The groups where uid may do action, each decided as /authorize decides it; ordered by
        guid, from after `cursor`. For an action a non-member may do (getGroupDetails, joinGroup)
        every group is a candidate, else only uid's own; at most SCAN_LIMIT are looked at per
        call (nextCursor then resumes the scan)."""
        self._prepare(None if at_least_revision is None else [at_least_revision])
        engine = self.engine
        known = engine.validate(AuthzRequest(uid, action, "-", None, context or {}))  # a 400 for what is wrong
        if GROUP_RULES.get(known.name) == "creator":
            raise BadRequestError.field("action", f"{action} names a group that does not exist yet: it is not "
                                        "a question about existing groups")
        stale = self.staleness_s()
        everyone = GROUP_RULES.get(known.name) in ("visitor", "joiner")
        candidates = self._with_facts(  # taken just before they are decided (a working set: from the store)
            lambda: self._all_groups(self.state) if everyone else sorted(self.state.groups_of(uid)))
        window = _window(candidates, cursor)

        def answer() -> dict[str, Any]:
            if at_least_revision is not None and not self.reached(at_least_revision):
                raise self._not_reached(at_least_revision)
            state = self.state
            found, next_cursor = self._scan(candidates, cursor, limit, stale, lambda guid: AuthzRequest(
                uid, action, guid, None, context or {}))
            return {"groups": [{"guid": guid, "scope": _scope_in(state, uid, guid)} for guid in found],
                    "nextCursor": next_cursor, **self._at(state, stale)}
        return self._with_facts(answer, Facts([uid], window, [(guid, uid) for guid in window]))

    def members_who(self, guid: str, action: str, target: str | None = None,
                    context: Mapping[str, Any] | None = None, *, cursor: str | None = None, limit: int = 100,
                    at_least_revision: int | Token | None = None) -> dict[str, Any]:
        """The members (and owner) of guid who may do action (on target), each decided as
        /authorize decides it; ordered by uid, from after `cursor`."""
        self._prepare(None if at_least_revision is None else [at_least_revision])
        stale = self.staleness_s()
        self.engine.validate(AuthzRequest("-", action, guid, target, context or {}))

        def candidates_of() -> list[str]:
            owner = self.state.owner_of(guid)
            if owner is None:
                raise NotFoundError(f"The group {guid} does not exist.", code="ERR_GUID_NOT_FOUND")
            return sorted({*self.state.members_of(guid), owner})
        candidates = self._with_facts(candidates_of, Facts([], [guid], []))
        window = _window(candidates, cursor)
        others = [target] if target is not None else []

        def answer() -> dict[str, Any]:
            if at_least_revision is not None and not self.reached(at_least_revision):
                raise self._not_reached(at_least_revision)
            state = self.state
            found, next_cursor = self._scan(candidates, cursor, limit, stale, lambda uid: AuthzRequest(
                uid, action, guid, target, context or {}))
            return {"members": [{"uid": uid, "scope": _scope_in(state, uid, guid)} for uid in found],
                    "nextCursor": next_cursor, **self._at(state, stale)}
        users = [*window, *others]
        return self._with_facts(answer, Facts(users, [guid], [(guid, uid) for uid in users]))

    def _scan(self, candidates: list[str], cursor: str | None, limit: int, stale: float,
              request_for: Callable[[str], AuthzRequest]) -> tuple[list[str], str | None]:
        """The candidates after cursor that the engine allows, up to limit; and where to resume
        (None: no more). Fail closed: untrusted state allows none."""
        if self._untrusted(stale) is not None:
            return [], None
        start = bisect.bisect_right(candidates, cursor) if cursor is not None else 0
        engine, state, found = self.engine, self.state, []
        end = min(len(candidates), start + SCAN_LIMIT)
        for index in range(start, end):
            if engine.decide(request_for(candidates[index]), state).allowed:
                found.append(candidates[index])
                if len(found) == limit:
                    return found, candidates[index] if index + 1 < len(candidates) else None
        return found, candidates[end - 1] if end < len(candidates) else None

    def _all_groups(self, state: RuntimeState) -> list[str]:
        """Every guid, sorted; kept per state and revision (a list question over all groups)."""
        cached = self._sorted_groups
        if cached is None or cached[0] is not state or cached[1] != state.revision:
            cached = (state, state.revision, sorted(state.group_ids()))  # a working set: the store's list
            self._sorted_groups = cached
        return cached[2]

    def _at(self, state: RuntimeState, stale: float) -> dict[str, Any]:
        """A list answer's revision, token and policy; with untrusted state (none allowed), why."""
        at: dict[str, Any] = {"revision": state.revision, "token": format_token(state.epoch, state.revision),
                              "policyHash": self.engine.policy.content_hash}
        untrusted = self._untrusted(stale)
        if untrusted is not None:
            at["refused"] = {"code": untrusted[0], "reason": untrusted[1]}
        if self.synced:
            at["stalenessSeconds"] = round(stale, 3)
        return at

    def _refuse(self, engine: Engine, request: AuthzRequest, code: str, reason: str) -> Decision:
        """Fail closed: a valid request denied because the state cannot be trusted."""
        engine.validate(request)
        try:
            role = self.state.role_of(request.uid)
        except MissingFacts:
            role = "unknown"
        return Decision(False, reason, "store", role, code, None, self.state.revision, engine.policy.content_hash)

    def _next_decision_id(self) -> str:
        return f"{self._id_prefix}-{next(self._ids)}"

    def reached(self, wanted: Wanted) -> bool:
        """Is the state at least as new as `wanted`? An integer means "in the current epoch"; a
        token only ever matches its own epoch; a batch needs all that can ever match."""
        if isinstance(wanted, list):
            return all(self.reached(one) for one in wanted if not self._never(one))
        state = self.state
        if isinstance(wanted, Token):
            return wanted.epoch == state.epoch and state.revision >= wanted.revision
        return state.revision >= wanted

    def _never(self, wanted: int | Token) -> bool:
        """A token of an epoch this sidecar left (the store lost data since), or of another file."""
        return isinstance(wanted, Token) and wanted.epoch != self.state.epoch and (
            wanted.epoch in self.past_epochs or not self.synced)

    def _not_reached(self, wanted: int | Token) -> ChatAuthzError:
        state = self.state
        if isinstance(wanted, Token) and wanted.epoch != state.epoch:
            return ChatAuthzError(
                f"The token is from store epoch {wanted.epoch}; this sidecar is at {state.epoch}:{state.revision}. "
                "A token from before a data loss can never be satisfied: the write it names may be lost; read "
                "without it, or write again.", code=EPOCH_MISMATCH_CODE, status=409)
        revision = wanted.revision if isinstance(wanted, Token) else wanted
        return ChatAuthzError(f"This sidecar is at revision {state.revision}; revision {revision} was not reached: "
                              f"the store has not committed it, or could not be read within {self.revision_wait_s}s.",
                              code="ERR_REVISION_NOT_REACHED", status=503)

    def wait_for_revision(self, revision: Wanted) -> bool:
        """Catch up until the state reaches `revision`; reached? Caught up yet still behind, the
        store never committed `revision` (a write's revision is committed before it is answered):
        refused at once. Only an unreadable store is waited for, by at most revision_waiters
        requests at a time (each up to revision_wait_s); the rest are refused at once."""
        if not self.synced and not self._may_be_committed(revision):
            return False  # the embedded store's counter (no query): nothing that new committed
        try:
            self.catch_up()
            return self.reached(revision)
        except StoreError:
            pass
        if not self._waiters.acquire(blocking=False):
            return False
        try:
            return self._retry_until(revision, time.monotonic() + self.revision_wait_s)
        finally:
            self._waiters.release()

    def _may_be_committed(self, wanted: Wanted) -> bool:
        """Embedded store: may the file hold `wanted`? (its shared counter; no query)"""
        if isinstance(wanted, list):
            return all(self._may_be_committed(one) for one in wanted if not self._never(one))
        revision = wanted.revision if isinstance(wanted, Token) else wanted
        return self._polled is None or self._polled.changed(revision - 1)

    def _retry_until(self, revision: Wanted, deadline: float) -> bool:
        while True:
            try:
                self.catch_up()
            except StoreError:
                pass  # keep trying until the deadline
            if self.reached(revision):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)

    def read(self, view: Callable[[PolicySet, RuntimeState], Any]) -> Any:
        """Run a view function on caught-up state."""
        if not self.synced:
            self.refresh()
        def run() -> Any:
            with self._fetching():
                return view(self.policy, self.state)
        return self._with_facts(run)

    # -- writes ----------------------------------------------------------------------------
    def _count_write(self, result: str) -> None:
        if self.on_write is not None:
            self.on_write(result)

    def write(self, plan: Callable[[WriteContext], tuple[list[Op], R]], actor: str,
              after: Callable[[WriteContext, R], Any] | None = None) -> Written[R]:
        """Check and change in one step: plan(tx) runs inside the store's exclusive transaction on
        caught-up state, with the engine and policy taken there, and returns (ops, result); it
        raises to refuse, and then nothing is written. after(tx, result), if given, reads the
        state at exactly the write's revision (no other change in between) for the response;
        with a working set that lacked what it reads, at the first revision it could.

        On a ReadTracking store (Redis) writes of this process run concurrently: the plan reads
        through a ReadView, and the store commits it only if nothing it read changed since."""
        for _ in range(FACT_ROUNDS):
            try:
                if _tracks_reads(type(self.store)):
                    written, engine = self._write_tracked(self.store, plan, actor, after)  # type: ignore[arg-type]
                else:
                    written, engine = self._write_once(plan, actor, after)
            except MissingFacts as exc:  # nothing was written: read what the plan lacked, plan again
                self._read_facts(exc.facts, lambda: None)
                continue
            if after is not None and written.shown is _NOT_SHOWN:
                return self._show(written, engine, after)
            return written
        self._count_write("failed")
        raise StoreError(f"the facts this write reads kept changing in the store ({FACT_ROUNDS} reads)")

    def _show(self, written: Written[R], engine: Engine, after: Callable[[WriteContext, R], Any]) -> Written[R]:
        """after() once more, outside the write's locks, reading what a working set lacked."""
        shown = self._with_facts(lambda: after(WriteContext(engine, self.state), written.result))
        return Written(written.revision, written.token, written.result, shown)

    def _write_once(self, plan: Callable[[WriteContext], tuple[list[Op], R]], actor: str,
                    after: Callable[[WriteContext, R], Any] | None) -> tuple[Written[R], Engine]:
        with self._write_lock, self._catch_up_lock:  # nothing else advances our state meanwhile
            planned: list[tuple[WriteContext, R]] = []

            def run_plan() -> list[Op]:
                self._catch_up_locked()
                with self._lock, self._fetching():
                    tx = WriteContext(self.engine, self.state)
                    ops, result = plan(tx)
                    planned.append((tx, result))
                    return [with_before(self.state, op) for op in ops]
            revision, ops = self._counted(lambda: self.store.write(run_plan, actor))
            tx, result = planned[-1]  # a store may run the plan again (Redis, on a conflict): the last counts
            with self._lock, self._fetching():
                self._apply_entries([(revision, ops)] if ops else [])
                done = WriteContext(tx.engine, self.state)
                try:
                    shown = after(done, result) if after is not None else None
                except MissingFacts:
                    shown = _NOT_SHOWN  # committed: read outside the locks, never plan again
                token = format_token(self.state.epoch, revision)
            self.last_heard = time.monotonic()
            return Written(revision, token, result, shown), tx.engine

    def _counted(self, commit: Callable[[], W]) -> W:
        """The store's commit, counted: committed, unchanged (no ops), refused or failed."""
        try:
            done = commit()
        except StoreError:
            self.store_errors += 1
            self._count_write("failed")
            raise
        except ChatAuthzError:
            self._count_write("refused")
            raise
        self._count_write("committed" if done[1] else "unchanged")
        return done

    def _write_tracked(self, store: ReadTracking, plan: Callable[[WriteContext], tuple[list[Op], R]], actor: str,
                       after: Callable[[WriteContext, R], Any] | None) -> tuple[Written[R], Engine]:
        planned: list[tuple[WriteContext, R]] = []

        def run_plan(refresh: bool) -> PlanRun:
            if refresh or self.sync is None or self.sync.status != "OK":
                self.catch_up()  # else the follower keeps the state current, and the store checks it is
            with self._lock, self._fetching():
                view = ReadView(self.state)
                tx = WriteContext(self.engine, view.as_state())
                ops, result = plan(tx)
                ops = [with_before(view.as_state(), op) for op in ops]  # what `before` reads is read too
                planned.append((tx, result))
                return PlanRun(ops, view.reads, view.epoch, view.revision)
        revision, ops, between = self._counted(lambda: store.write_tracked(run_plan, actor))
        tx, result = planned[-1]  # the store may run the plan again: the last counts
        epoch = tx.state.epoch
        with self._lock:  # what others committed since the plan's revision, then ours, in order
            if ops and self.state.epoch == epoch:
                first = between[0][0] if between else revision
                if first <= self.state.revision + 1:  # contiguous with our state
                    self._apply_entries(between)
                if self.state.revision == revision - 1:
                    self.state.apply_all(ops, revision)
            behind = bool(ops) and self.state.epoch == epoch and self.state.revision < revision
        if behind:
            try:
                self.catch_up()  # the store did not hand us all of them
            except StoreError as exc:  # committed all the same: the follower applies it
                log.warning("write %s committed, but catching up after it failed: %s", revision, exc.message)
        with self._lock, self._fetching():
            done = WriteContext(tx.engine, self.state)
            try:  # at the write's revision, unless another thread went on
                shown = after(done, result) if after is not None else None
            except MissingFacts:
                shown = _NOT_SHOWN  # committed: read outside the lock, never plan again
            token = format_token(epoch if ops else self.state.epoch, revision)
        self.last_heard = time.monotonic()
        return Written(revision, token, result, shown), tx.engine


_NOT_SHOWN = object()


@functools.cache
def _tracks_reads(kind: type) -> bool:
    """Is a store of this class ReadTracking? Asked once per class (a protocol check costs ~30 µs a write)."""
    return issubclass(kind, ReadTracking)


def _scope_in(state: RuntimeState, uid: str, guid: str | None) -> str | None:
    """uid's scope in guid ("owner" for its owner), None when not a member or no group."""
    if guid is None:
        return None
    return OWNER if state.owner_of(guid) == uid else state.scope_of(guid, uid)


def _memo_key(uid: str, guid: str | None, target: str | None, facts: Mapping[str, Any], state: RuntimeState,
              engine: Engine, untrusted: tuple[str, str] | None) -> tuple[Any, ...] | None:
    """What a capabilities answer depends on: its inputs, the state (object, epoch, revision) and
    the engine; None when a fact cannot be a key (then nothing is remembered)."""
    try:
        items = tuple(sorted(facts.items()))
        hash(items)
    except TypeError:
        return None
    return (uid, guid, target, items, id(state), state.epoch, state.revision, id(engine), untrusted)


def _role_key(key: tuple[Any, ...] | None, uid: str, target: str | None, state: RuntimeState,
              engine: Engine) -> tuple[Any, ...] | None:
    """The key of the app-wide actions' answers shared by every user of uid's role (same target,
    facts, state and revision): an app-wide decision reads of its user only the role, and names
    the user in its reason only when the role no longer exists or the user is its own target."""
    role = state.role_of(uid)
    if key is None or target == uid or (role not in engine.policy.roles and role not in state.roles):
        return None
    return ("app-wide", role, *key[2:])


def _window(candidates: list[str], cursor: str | None) -> list[str]:
    """The candidates a list question looks at in one call (SCAN_LIMIT after cursor)."""
    start = bisect.bisect_right(candidates, cursor) if cursor is not None else 0
    return candidates[start:start + SCAN_LIMIT]


def facts_for(uid: str, guid: str | None, target: str | None) -> Facts:
    """The facts a decision on uid (in guid, on target) reads: their roles, the group, their memberships."""
    users = [uid] if target is None or target == uid else [uid, target]
    if guid is None:
        return Facts(users, [], [])
    return Facts(users, [guid], [(guid, user) for user in users])
