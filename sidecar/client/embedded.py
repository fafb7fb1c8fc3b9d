"""Embedded: the engine in the app's process, synced from the same store as the sidecars
(SQLite data folder or Redis), with Client's methods and no socket and no JSON in between.

Built by sidecar.compose.build_sidecar, so it decides exactly as a served sidecar: checks parse
with sidecar.wire.check_of / parse_check and are decided by Sidecar.decided / decide_many (its
revision and staleness checks included); writes parse with the views' parse_* and commit the same plan_*
through Sidecar.write. Not built here: Prometheus metrics (on_decision / on_write / gauges are
the served sidecar's /metrics, not the app's). Its own writes are in its state when they return,
so it sends no remembered token; an at_least_revision given (a Client's write) is honoured.
"""
from __future__ import annotations

import copy
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self, cast

import orjson

from sidecar import groups as grp
from sidecar import management as m
from sidecar.client import calls
from sidecar.client.calls import CheckItem, Consistency, Write, WriteHelpers
from sidecar.client.decision import Decision, WriteToken
from sidecar.client.errors import PermissionDenied, ServerError, SidecarError, error_for
from sidecar.compose import build_sidecar
from sidecar.config import DEFAULT_POLICIES, Settings
from sidecar.core import WriteContext
from sidecar.errors import ChatAuthzError
from sidecar.management import Planned
from sidecar.validation import clean_id
from sidecar.wire import Check, check_of, parse_check, parse_query

Plan = Callable[[WriteContext], Planned]
After = Callable[[WriteContext, Any], Any]


def _translated(exc: ChatAuthzError) -> SidecarError:
    return error_for(exc.status, exc.code, exc.message, exc.details)


class Embedded(WriteHelpers[WriteToken]):
    """Decisions and writes in this process. Give data_dir (the sidecars' SQLite data folder) or
    redis_url (their Redis; data_dir then keeps its epoch record, else a temporary folder)."""

    def __init__(self, policies: str | Path | None = None, *, data_dir: str | Path | None = None,
                 redis_url: str | None = None, model: str | Path | None = None, fail_closed: bool = False,
                 actor: str = "embedded", **settings: Any) -> None:
        if data_dir is None and redis_url is None and not settings.get("redis_sentinel"):
            raise ValueError("Embedded needs data_dir (the SQLite data folder) or redis_url")
        self._temp = Path(tempfile.mkdtemp(prefix="chatauthz-embedded-")) if data_dir is None else None
        self.settings = Settings(policies=Path(policies) if policies is not None else DEFAULT_POLICIES,
                                 model=Path(model) if model is not None else None,
                                 data_dir=Path(data_dir) if data_dir is not None else self._temp,  # type: ignore[arg-type]
                                 redis_url=redis_url, **settings)
        self.settings.validate()
        try:
            core = build_sidecar(self.settings, start_threads=False)
        except ChatAuthzError as exc:
            self._remove_temp()
            raise _translated(exc) from exc
        core.on_decision = core.on_write = None  # the served sidecar's metrics, not the app's
        core.gauges = None
        core.start()  # the Redis follower, the policy watcher (and a decision log if configured)
        self.core = core
        self.fail_closed = fail_closed
        self.actor = actor
        self.consistency = Consistency()
        self._owner = True

    @property
    def token(self) -> str | None:
        """The latest token this Embedded (or session) wrote."""
        return self.consistency.token

    def session(self) -> Self:
        """Client's per-request view, for the same code to run on either (shares the engine)."""
        child = copy.copy(self)
        child.consistency = Consistency()
        child._owner = False
        return child

    # -- decisions ---------------------------------------------------------------------------
    def check(self, uid: str, action: str, guid: str | None = None, target: str | None = None,
              context: Mapping[str, Any] | None = None, *, at_least_revision: str | int | None = None) -> Decision:
        try:  # the server's checks on the fields of a body, without the body (nor JSON)
            decided, token, decision_id = self.core.decided(*check_of(
                uid, action, guid, target, dict(context) if isinstance(context, Mapping) else context, at_least_revision))
        except ChatAuthzError as exc:
            return self._no_answer(_translated(exc))
        return Decision.of(decided.allowed, decided.code, decided.reason, decided.layer, decided.role, decided.scope,
                           decided.revision, token, decision_id)

    def check_many(self, checks: Iterable[CheckItem], *, at_least_revision: str | int | None = None
                   ) -> list[Decision | SidecarError]:
        parsed: list[Check | ChatAuthzError] = []
        for item in checks:
            body = calls.item_body(item)
            if at_least_revision is not None:
                body.setdefault("atLeastRevision", at_least_revision)
            try:
                parsed.append(parse_check(body))
            except ChatAuthzError as exc:
                parsed.append(exc)
        results: list[Decision | SidecarError] = []
        for result in self.core.decide_many(parsed):
            if isinstance(result, ChatAuthzError):
                error = _translated(result)
                results.append(Decision.unavailable(error.message) if self.fail_closed and
                               isinstance(error, ServerError) else error)
            else:
                results.append(Decision.from_body(result))
        return results

    def capabilities(self, uid: str, guid: str | None = None, target: str | None = None,
                     context: Mapping[str, Any] | None = None, *, at_least_revision: str | int | None = None
                     ) -> dict[str, Any]:
        """Sidecar.capabilities on a query parsed as the server parses it (wire.parse_query)."""
        try:
            q = parse_query(calls.query_body(uid, guid, target, context, at_least_revision), "capabilities")
            assert q.uid is not None
            answer = self.core.capabilities(q.uid, q.guid, q.target, q.context, q.at_least)
        except ChatAuthzError as exc:
            raise _translated(exc) from None
        # the app's own copy: the sidecar remembers answers (per revision, shared by a role), and
        # an app that edits what it got must not change what it, or anyone, is told next
        return cast(dict[str, Any], orjson.loads(orjson.dumps(answer)))

    def require(self, uid: str, action: str, guid: str | None = None, target: str | None = None,
                context: Mapping[str, Any] | None = None, *, at_least_revision: str | int | None = None) -> Decision:
        decision = self.check(uid, action, guid, target, context, at_least_revision=at_least_revision)
        if not decision.allowed:
            raise PermissionDenied(decision)
        return decision

    def _no_answer(self, exc: SidecarError) -> Decision:
        if self.fail_closed and isinstance(exc, ServerError):
            return Decision.unavailable(exc.message)
        raise exc

    # -- writes: the views' parse_* and plan_*, committed by Sidecar.write ---------------------
    def _write(self, call: Write) -> WriteToken:
        try:
            plan, after = self._plan(call)
            done = self.core.write(plan, self.actor, after)
        except ChatAuthzError as exc:
            raise _translated(exc) from None
        token = WriteToken(done.token, done.revision, done.shown)
        self.consistency.remember(token)
        return token

    def _plan(self, call: Write) -> tuple[Plan, After | None]:
        """The plan (and the view of its answer) of PUT/POST/DELETE as the Flask views build them."""
        as_user = clean_id(call.on_behalf_of, "onBehalfOf") if call.on_behalf_of is not None else None
        guid, uid, body = call.ids.get("guid", ""), call.ids.get("uid", ""), call.body
        if call.name == "set_role":
            role = m.parse_user_role(body)
            return (lambda tx: m.plan_set_user_role(tx, uid, role)), lambda tx, _: m.user_view(tx.state, uid)
        if call.name == "set_group":
            owner = grp.parse_group(body)
            return (lambda tx: grp.plan_set_group(tx, guid, owner, as_user)), lambda tx, _: grp.group_view(tx.state, guid)
        if call.name == "add_members":
            wanted = grp.parse_members(body)
            return (lambda tx: grp.plan_add_members(tx, guid, wanted, as_user)), lambda tx, result: result
        if call.name == "set_scope":
            scope = grp.parse_member(body)
            return ((lambda tx: grp.plan_set_member(tx, guid, uid, scope, as_user)),
                    lambda tx, _: {"guid": guid, "uid": uid, "scope": tx.state.scope_of(guid, uid)})
        plans: dict[str, Plan] = {
            "delete_group": lambda tx: grp.plan_delete_group(tx, guid, as_user),
            "kick": lambda tx: grp.plan_remove_member(tx, guid, uid, as_user),
            "ban": lambda tx: grp.plan_ban(tx, guid, uid, as_user),
            "unban": lambda tx: grp.plan_unban(tx, guid, uid, as_user),
        }
        return plans[call.name], None

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the background threads (sync, policy watcher) and close the store."""
        if not self._owner:
            return
        self.core.stop()
        close = getattr(self.core.store, "close", None)
        if close is not None:
            close()
        self._remove_temp()

    def _remove_temp(self) -> None:
        if self._temp is not None:
            shutil.rmtree(self._temp, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
