"""A Flask guard: `authz = FlaskAuthz(client)`, then on a view

    @authz.require("sendMessage", uid=lambda req: req.headers["X-User"], guid=lambda req: req.view_args["guid"])

A denial answers 403 {"error": {"code", "message", "reason"}} before the view runs; no answer from
the sidecar answers 503 {"error": {"code": "ERR_SIDECAR_UNAVAILABLE", ...}} (with a fail_closed
client that is a denial: 403 with that code). Any other SidecarError (an unknown action, a bad
uid) is the app's error and propagates. The allowing Decision is in `flask.g.authz_decision`;
`authz.current` is this request's session of the client (its writes are read by its checks).
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

from flask import Request, Response, g, jsonify, request

from sidecar.client.decision import Decision
from sidecar.client.errors import UNAVAILABLE, SidecarUnavailable

F = TypeVar("F", bound=Callable[..., Any])
Source = Callable[[Request], Any] | str | None  # read from the request, or a constant


class SyncChecker(Protocol):
    def check(self, uid: str, action: str, guid: str | None = None, target: str | None = None,
              context: Mapping[str, Any] | None = None) -> Decision: ...

    def session(self) -> Any: ...


def _value(source: Source | Mapping[str, Any], req: Request) -> Any:
    return source(req) if callable(source) else source


class FlaskAuthz:
    """Guards Flask views with a Client (or Embedded): one check per request before the view."""

    def __init__(self, client: SyncChecker) -> None:
        self.client = client

    @property
    def current(self) -> Any:
        """This request's session of the client (made on first use, dropped with the request)."""
        session = g.get("_chatauthz_session")
        if session is None:
            session = g._chatauthz_session = self.client.session()
        return session

    def require(self, action: str, *, uid: Source, guid: Source = None, target: Source = None,
                context: Callable[[Request], Mapping[str, Any]] | Mapping[str, Any] | None = None
                ) -> Callable[[F], F]:
        """A decorator: the view runs only if uid may do action (guid, target, context read from
        the request by the callables given)."""
        def decorate(view: F) -> F:
            @functools.wraps(view)
            def guarded(*args: Any, **kwargs: Any) -> Any:
                try:
                    decision = self.current.check(_value(uid, request), action, _value(guid, request),
                                                  _value(target, request), _value(context, request))
                except SidecarUnavailable as exc:
                    return _answer(503, UNAVAILABLE, exc.message)
                if not decision.allowed:
                    return _answer(403, decision.code or "ERR_PERMISSION_DENIED", decision.reason)
                g.authz_decision = decision
                return view(*args, **kwargs)
            return guarded  # type: ignore[return-value]
        return decorate


def _answer(status: int, code: str, reason: str) -> Response:
    response = jsonify({"error": {"code": code, "message": reason, "reason": reason}})
    response.status_code = status
    return response
