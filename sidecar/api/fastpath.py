"""A lean WSGI path for POST /authorize, /authorize/batch and the capability and list
questions (/authorize/capabilities, /authorize/groups, /authorize/members), and for the two
writes a chat service makes most (PUT /users/<uid>, PUT /groups/<guid>/members/<uid>), in front
of the Flask app.

Flask's request machinery costs more CPU than a decision, and about as much as the write itself.
This path does the same work with the same functions as every Flask route (authenticate, the
onBehalfOf rule, and sidecar.wire's content-type rule, JSON reader, parse_check and error
envelope), then Sidecar.decide or decide_many, or the write's own view function (api/groups.py),
on the raw WSGI environ; a write is timed and logged as the Flask routes are (api/ops.py). Every
other request goes to Flask unchanged.
"""
from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

import orjson
from flask import Flask

from sidecar import wire
from sidecar.api import groups
from sidecar.api.auth import ON_BEHALF_ENDPOINTS, ON_BEHALF_ONLY_THERE, authenticate
from sidecar.api.authorize import RULES
from sidecar.api.bodies import AlreadyAnsweredError, BodyReader
from sidecar.errors import BadRequestError
from sidecar.logs import take_request_id
from sidecar.metrics import observe_request

log = logging.getLogger("chatauthz.api")
JSON_HEADERS = [("Content-Type", "application/json")]
STATUS_LINES = {200: "200 OK", 400: "400 BAD REQUEST", 401: "401 UNAUTHORIZED", 403: "403 FORBIDDEN",
                408: "408 REQUEST TIMEOUT", 413: "413 REQUEST ENTITY TOO LARGE", 500: "500 INTERNAL SERVER ERROR",
                503: "503 SERVICE UNAVAILABLE"}
Body = Callable[[], Any]
# PUT writes answered here: (path pattern, Flask endpoint, its URL rule, the view function's call)
WriteView = Callable[[Any, str, tuple[str, ...], Body, str | None], dict[str, Any]]  # (core, key, ids, body, onBehalfOf)
WRITES: tuple[tuple[re.Pattern[str], str, str, WriteView], ...] = (
    (re.compile(r"/users/([^/]+)"), "groups.set_user", "/users/<uid>",
     lambda core, by, ids, body, _: groups.user_answer(core, by, ids[0], body)),
    (re.compile(r"/groups/([^/]+)/members/([^/]+)"), "groups.set_member", "/groups/<guid>/members/<uid>",
     lambda core, by, ids, body, behalf: groups.member_answer(core, by, ids[0], ids[1], body, behalf)),
)


class AuthorizeFastPath:
    def __init__(self, app: Flask, max_body_bytes: int) -> None:
        self.app = app
        self.flask_wsgi = app.wsgi_app
        self.core = app.extensions["chatauthz"]
        self.keys = app.extensions["chatauthz.keys"]
        settings = app.extensions["chatauthz.settings"]
        self.max_batch = settings.max_batch
        self.max_body_bytes = max_body_bytes
        self.bodies = BodyReader(settings.body_timeout_s)
        core = self.core
        self.routes: dict[str, Callable[[Any], dict[str, Any]]] = {
            "/authorize": lambda body: {"data": core.decide(*wire.parse_check(body))},
            "/authorize/batch": lambda body: wire.batch_body(core.decide_many(wire.parse_batch(body, self.max_batch))),
            "/authorize/capabilities": self._capabilities, "/authorize/groups": self._groups,
            "/authorize/members": self._members}
        assert set(self.routes) == set(RULES.values()), "a fast path route without its URL rule, or the reverse"
        rules = {(rule.endpoint, rule.rule) for rule in app.url_map.iter_rules() if "PUT" in (rule.methods or ())}
        assert all((endpoint, rule) in rules for _, endpoint, rule, _ in WRITES), "a fast path write without its rule"

    def _capabilities(self, body: Any) -> dict[str, Any]:
        q = wire.parse_query(body, "capabilities")
        assert q.uid is not None
        return {"data": self.core.capabilities(q.uid, q.guid, q.target, q.context, q.at_least)}

    def _groups(self, body: Any) -> dict[str, Any]:
        q = wire.parse_query(body, "groups")
        assert q.uid is not None and q.action is not None
        return {"data": self.core.groups_where(q.uid, q.action, q.context, cursor=q.cursor, limit=q.limit,
                                               at_least_revision=q.at_least)}

    def _members(self, body: Any) -> dict[str, Any]:
        q = wire.parse_query(body, "members")
        assert q.guid is not None and q.action is not None
        return {"data": self.core.members_who(q.guid, q.action, q.target, q.context, cursor=q.cursor,
                                              limit=q.limit, at_least_revision=q.at_least)}

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO"), environ.get("REQUEST_METHOD")
        if method == "POST" and path in self.routes:
            return self._answer(environ, start_response, path, path, lambda _: self.routes[path](self._json(environ)))
        if method == "PUT" and path:
            decoded = path.encode("latin-1").decode("utf-8", "replace")  # as Werkzeug's routing reads it
            for pattern, endpoint, rule, view in WRITES:
                found = pattern.fullmatch(decoded)
                if found is not None:
                    return self._answer(environ, start_response, decoded, rule,
                                        functools.partial(self._write, view, found.groups(), environ), endpoint)
        return one_chunk(self.flask_wsgi(environ, start_response))

    def _answer(self, environ: dict[str, Any], start_response: Callable[..., Any], path: str, route: str,
                answer: Callable[[str], dict[str, Any]], endpoint: str | None = None) -> list[bytes]:
        """Authenticate, answer(the key's name), send it; endpoint: a write's (else /authorize's)."""
        started = time.perf_counter()
        rid = take_request_id(environ.get("HTTP_X_REQUEST_ID"))
        method, by = environ["REQUEST_METHOD"], None
        try:
            by = authenticate(self.keys, environ.get("HTTP_APIKEY", ""), endpoint is None).name
            if "HTTP_ONBEHALFOF" in environ and endpoint not in ON_BEHALF_ENDPOINTS:
                raise BadRequestError.field("onBehalfOf", ON_BEHALF_ONLY_THERE)
            status, payload = 200, answer(by)
        except AlreadyAnsweredError:
            self._done(route, method, path, 408, started, by, endpoint)
            return []  # the 408 went out at the deadline; the server drops this late answer
        except Exception as exc:  # noqa: BLE001 - every error leaves as the one envelope
            status, payload = wire.error_body(exc)
            if status == 500:
                log.exception("unhandled error in %s", path)
        data = orjson.dumps(payload)
        headers = [*JSON_HEADERS, ("Content-Length", str(len(data))), ("X-Request-Id", rid)]
        if status == 408 or (status >= 400 and _body_unread(environ)):
            # answered without reading the body (a 408, a refused key, a non-JSON body): its bytes
            # may still be on the way, so this connection cannot carry another request
            headers.append(("Connection", "close"))
        start_response(STATUS_LINES.get(status) or f"{status} {_phrase(status)}", headers)
        self._done(route, method, path, status, started, by, endpoint)
        return [data]

    def _write(self, view: WriteView, ids: tuple[str, ...], environ: dict[str, Any], by: str) -> dict[str, Any]:
        return view(self.core, by, ids, functools.partial(self._json, environ), environ.get("HTTP_ONBEHALFOF"))

    @staticmethod
    def _done(route: str, method: str, path: str, status: int, started: float, by: str | None,
              endpoint: str | None) -> None:
        observe_request(route, method, status, time.perf_counter() - started)
        if endpoint is not None:  # a write: the log line every Flask write has (api/ops.py)
            log.info("%s %s -> %s", method, path, status, extra={"actor": by, "route": route, "status": status})

    def _json(self, environ: dict[str, Any]) -> Any:
        return wire.read_json(environ.get("CONTENT_TYPE"), environ.get("CONTENT_LENGTH"),
                              functools.partial(self._read, environ), limit=self.max_body_bytes)

    def _read(self, environ: dict[str, Any], length: int) -> bytes:
        raw = self.bodies.read(environ, length)
        environ["chatauthz.body_read"] = True
        return raw


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.upper()
    except ValueError:
        return "ERROR"


def one_chunk(body: Iterable[bytes]) -> list[bytes]:
    """A Flask answer as one chunk. Given an iterator, granian sends the headers and then each
    chunk in writes of their own, and a kept-alive client's delayed ACK then holds the body
    ~40 ms (Nagle): every management call on a kept-alive connection took 44 ms. Our answers
    are small JSON documents (the largest, /openapi.json, some 100 kB)."""
    try:
        return [b"".join(body)]
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()


def _body_unread(environ: dict[str, Any]) -> bool:
    """Was a request body sent ("00", a bad length and chunked count) and not read?"""
    if "chatauthz.body_read" in environ:
        return False
    if "HTTP_TRANSFER_ENCODING" in environ:
        return True
    try:
        return int(environ.get("CONTENT_LENGTH") or 0) != 0
    except ValueError:
        return True
