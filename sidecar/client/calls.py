"""What every client sends and how it reads the answers, without I/O (Client, AsyncClient and
Embedded share it): check bodies, the write helpers as Write descriptions, the tokens a client
remembers, and the error envelope turned into typed errors. Imports no engine."""
from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Generic, NamedTuple, TypeVar

import orjson

from sidecar.client.decision import Decision
from sidecar.client.errors import BadRequest, EpochMismatch, ServerError, SidecarError, SidecarUnavailable, error_for
from sidecar.errors import BadRequestError
from sidecar.validation import clean_id

W = TypeVar("W")
CheckItem = Mapping[str, Any] | Sequence[Any]  # check_many: {uid, action, guid?, ...} or (uid, action, ...)


def check_body(uid: str, action: str, guid: str | None = None, target: str | None = None,
               context: Mapping[str, Any] | None = None, at_least_revision: str | int | None = None
               ) -> dict[str, Any]:
    """The body of POST /authorize (the sidecar validates it, as Embedded does with parse_check)."""
    body: dict[str, Any] = {"uid": uid, "action": action}
    if guid is not None:
        body["guid"] = guid
    if target is not None:
        body["target"] = target
    if context is not None:  # a copy of a mapping; anything else as given, for the sidecar's 400
        body["context"] = dict(context) if isinstance(context, Mapping) else context
    if at_least_revision is not None:
        body["atLeastRevision"] = at_least_revision
    return body


def query_body(uid: str, guid: str | None, target: str | None, context: Mapping[str, Any] | None,
               at_least_revision: str | int | None) -> dict[str, Any]:
    """The body of POST /authorize/capabilities."""
    body = check_body(uid, "", guid, target, context, at_least_revision)
    del body["action"]
    return body


def batch_bodies(checks: Iterable[CheckItem], wanted: str | int | None) -> list[dict[str, Any]]:
    """The /authorize/batch checks, each waiting for `wanted` unless it names its own revision."""
    bodies = [item_body(item) for item in checks]
    if wanted is not None:
        for body in bodies:
            body.setdefault("atLeastRevision", wanted)
    return bodies


def item_body(item: CheckItem) -> dict[str, Any]:
    """One check of check_many, as a body (a mapping of check()'s arguments, or a tuple of them)."""
    if isinstance(item, Mapping):
        return check_body(**item)
    return check_body(*item)


class Consistency:
    """The latest token this client (or session) wrote: sent as atLeastRevision on its checks."""

    def __init__(self) -> None:
        self.token: str | None = None
        self._lock = threading.Lock()

    def remember(self, token: str) -> None:
        """Keep the newer of the two (a concurrent older write of the same epoch never wins)."""
        epoch, _, revision = token.rpartition(":")
        with self._lock:
            if self.token is not None:
                known_epoch, _, known = self.token.rpartition(":")
                if known_epoch == epoch and int(known) >= int(revision):
                    return
            self.token = token

    def forget(self, token: str | int | None) -> None:
        """A token of a lost epoch can never be reached: drop it (once raised to the caller)."""
        with self._lock:
            if self.token == token:
                self.token = None


def json_answer(status: int, raw: bytes) -> Any:
    """The JSON of a 2xx answer, or the typed error of any other."""
    try:
        payload = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        payload = None
    if 200 <= status < 300 and payload is not None:
        return payload
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        raise error_for(status, error["code"], str(error.get("message", "")), error.get("details"))
    text = raw[:200].decode("utf-8", "replace")
    if 200 <= status < 300:
        raise ServerError(f"HTTP {status} with a body that is not JSON: {text!r}", code="ERR_BAD_ANSWER",
                          status=status)
    raise error_for(status, f"ERR_HTTP_{status}", f"HTTP {status} without the sidecar's error envelope: {text!r}")


def decision_of(payload: Any) -> Decision:
    """The Decision of a 200 from /authorize; an answer that is not one is no answer at all
    (SidecarUnavailable: fail_closed denies), never a KeyError in the caller's handler."""
    try:
        return _checked(Decision.from_body(payload["data"]))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise SidecarUnavailable(f"the sidecar's answer is not a decision ({type(exc).__name__}: {exc})") from None


def batch_results(payload: Any, sent: int) -> list[Decision | SidecarError]:
    """/authorize/batch's results in order: a Decision, or that check's own error. An answer
    with another number of results than checks sent, or one that is not a batch answer, is no
    answer (SidecarUnavailable): a caller's all(...) must never count a check nobody answered."""
    try:
        answered = payload["data"]["results"]
        if not isinstance(answered, list) or len(answered) != sent:
            raise ValueError(f"{sent} checks sent, {len(answered) if isinstance(answered, list) else 'no'} results")
        results: list[Decision | SidecarError] = []
        for result in answered:
            error = result.get("error")
            if error is not None:
                results.append(error_for(None, error.get("code"), error.get("message", ""), error.get("details")))
            else:
                results.append(_checked(Decision.from_body(result)))
        return results
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise SidecarUnavailable(f"the sidecar's answer is not a batch answer ({type(exc).__name__}: {exc})") from None


def _checked(decision: Decision) -> Decision:
    """allowed must be exactly true or false: "false" or 1 is not an answer."""
    if decision.allowed is not True and decision.allowed is not False:
        raise ValueError(f"allowed is {decision.allowed!r}")
    return decision


def stale_token(exc: SidecarError, sent: str | int | None, consistency: Consistency) -> None:
    """After an error: a remembered token of a lost epoch is forgotten (the error still stands)."""
    if isinstance(exc, EpochMismatch) and sent is not None:
        consistency.forget(sent)


def ids(**values: str) -> dict[str, str]:
    """The ids of a write's path, canonical (sidecar.validation, as the server reads them), or BadRequest."""
    try:
        return {field: clean_id(value, field) for field, value in values.items()}
    except BadRequestError as exc:
        raise BadRequest(exc.message, details=exc.details) from None


class Write(NamedTuple):
    """One write helper's call: its name (Embedded's plan), HTTP method and path, body, the ids
    (canonical) and the onBehalfOf user."""
    name: str
    method: str
    path: str
    body: dict[str, Any] | None
    ids: dict[str, str]
    on_behalf_of: str | None = None


class WriteHelpers(Generic[W]):
    """The write helpers; each returns what _write returns (a WriteToken, or an awaitable of one)."""

    def _write(self, call: Write) -> W:
        raise NotImplementedError

    def set_role(self, uid: str, role: str) -> W:
        """PUT /users/{uid}: give uid a role (the server takes no onBehalfOf on this route)."""
        at = ids(uid=uid)
        return self._write(Write("set_role", "PUT", f"/users/{at['uid']}", {"role": role}, at))

    def create_group(self, guid: str, owner: str, *, on_behalf_of: str | None = None) -> W:
        """PUT /groups/{guid}: create it (or, if it exists, change its owner); the owner is an admin."""
        at = ids(guid=guid)
        return self._write(Write("set_group", "PUT", f"/groups/{at['guid']}", {"owner": owner}, at, on_behalf_of))

    set_owner = create_group

    def delete_group(self, guid: str, *, on_behalf_of: str | None = None) -> W:
        at = ids(guid=guid)
        return self._write(Write("delete_group", "DELETE", f"/groups/{at['guid']}", None, at, on_behalf_of))

    def add_members(self, guid: str, *, participants: Iterable[str] = (), moderators: Iterable[str] = (),
                    admins: Iterable[str] = (), ban: Iterable[str] = (), on_behalf_of: str | None = None) -> W:
        """POST /groups/{guid}/members (at most 25 uids): the token's data has the per-uid outcomes,
        one bad uid failing alone."""
        at = ids(guid=guid)
        lists = {"participants": list(participants), "moderators": list(moderators), "admins": list(admins),
                 "usersToBan": list(ban)}
        body = {name: uids for name, uids in lists.items() if uids}
        return self._write(Write("add_members", "POST", f"/groups/{at['guid']}/members", body, at, on_behalf_of))

    def set_scope(self, guid: str, uid: str, scope: str, *, on_behalf_of: str | None = None) -> W:
        """PUT /groups/{guid}/members/{uid}: add uid with this scope, or change its scope."""
        at = ids(guid=guid, uid=uid)
        return self._write(Write("set_scope", "PUT", f"/groups/{at['guid']}/members/{at['uid']}", {"scope": scope},
                                 at, on_behalf_of))

    def kick(self, guid: str, uid: str, *, on_behalf_of: str | None = None) -> W:
        """DELETE /groups/{guid}/members/{uid} (on behalf of uid itself: leaving)."""
        at = ids(guid=guid, uid=uid)
        return self._write(Write("kick", "DELETE", f"/groups/{at['guid']}/members/{at['uid']}", None, at,
                                 on_behalf_of))

    def ban(self, guid: str, uid: str, *, on_behalf_of: str | None = None) -> W:
        at = ids(guid=guid, uid=uid)
        return self._write(Write("ban", "POST", f"/groups/{at['guid']}/bannedusers/{at['uid']}", None, at,
                                 on_behalf_of))

    def unban(self, guid: str, uid: str, *, on_behalf_of: str | None = None) -> W:
        at = ids(guid=guid, uid=uid)
        return self._write(Write("unban", "DELETE", f"/groups/{at['guid']}/bannedusers/{at['uid']}", None, at,
                                 on_behalf_of))
