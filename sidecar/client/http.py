"""Client and AsyncClient: the sidecar over HTTP (TCP, or a Unix socket: url unix:///path.sock).

Both keep one keep-alive pool, send the latest token they wrote as atLeastRevision, and say
plainly when the sidecar did not answer: SidecarUnavailable, or with fail_closed=True a denial
with code ERR_SIDECAR_UNAVAILABLE (also for a 5xx: no decision was made). Never an allow without
an answer from the sidecar.
"""
from __future__ import annotations

import copy
from collections.abc import Awaitable, Iterable, Mapping
from types import TracebackType
from typing import Any, Self

import httpx
import orjson

from sidecar.client import calls
from sidecar.client.calls import CheckItem, Consistency, Write, WriteHelpers
from sidecar.client.decision import Decision, WriteToken
from sidecar.client.errors import PermissionDenied, ServerError, SidecarError, SidecarUnavailable
from sidecar.client.transport import Pool, address

JSON = "application/json"


class _Base:
    """What both clients hold: where the sidecar is, the key, the timeouts and the tokens."""

    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 0.2, fail_closed: bool = False,
                 write_timeout: float = 5.0) -> None:
        self.url = url
        self.timeout = timeout
        self.write_timeout = write_timeout  # a write may take a while to commit; its answer is its token
        self.fail_closed = fail_closed
        self.headers = {"Content-Type": JSON}
        if api_key is not None:
            self.headers["apikey"] = api_key
        self.consistency = Consistency()
        self._owner = True  # closes the pool; a session() shares it

    @property
    def token(self) -> str | None:
        """The latest token this client (or session) wrote, sent as atLeastRevision."""
        return self.consistency.token

    def session(self) -> Self:
        """A view for one request of the app: the same pool and settings, its own tokens (its
        checks wait only for its own writes). A context manager; leaving it closes nothing."""
        child = copy.copy(self)
        child.consistency = Consistency()
        child._owner = False
        return child

    def _wanted(self, at_least_revision: str | int | None) -> str | int | None:
        return at_least_revision if at_least_revision is not None else self.consistency.token

    def _write_headers(self, call: Write) -> dict[str, str]:
        if call.on_behalf_of is None:
            return self.headers
        return {**self.headers, "onBehalfOf": call.on_behalf_of}

    def _written(self, payload: Any) -> WriteToken:
        token = WriteToken(payload["token"], payload["revision"], payload.get("data"))
        self.consistency.remember(token)
        return token

    def _no_answer(self, exc: SidecarError) -> Decision:
        """fail_closed: the denial standing in for a decision the sidecar did not make."""
        if self.fail_closed and isinstance(exc, (SidecarUnavailable, ServerError)):
            return Decision.unavailable(exc.message)
        raise exc


def _require(decision: Decision) -> Decision:
    if not decision.allowed:
        raise PermissionDenied(decision)
    return decision


class Client(_Base, WriteHelpers[WriteToken]):
    """The sidecar over HTTP, for threaded code (thread-safe; one pool of keep-alive connections)."""

    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 0.2, fail_closed: bool = False,
                 write_timeout: float = 5.0) -> None:
        super().__init__(url, api_key=api_key, timeout=timeout, fail_closed=fail_closed,
                         write_timeout=write_timeout)
        self._pool = Pool(url, timeout)

    def _call(self, method: str, path: str, body: Any, headers: dict[str, str], timeout: float | None = None) -> Any:
        data = orjson.dumps(body) if body is not None else None
        status, raw = self._pool.request(method, path, data, headers, timeout)
        return calls.json_answer(status, raw)

    def check(self, uid: str, action: str, guid: str | None = None, target: str | None = None,
              context: Mapping[str, Any] | None = None, *, at_least_revision: str | int | None = None) -> Decision:
        """POST /authorize: a Decision (a denial is a Decision too); a caller error raises."""
        wanted = self._wanted(at_least_revision)
        try:
            return calls.decision_of(self._call("POST", "/authorize",
                                                calls.check_body(uid, action, guid, target, context, wanted),
                                                self.headers))
        except SidecarError as exc:
            calls.stale_token(exc, wanted, self.consistency)
            return self._no_answer(exc)

    def check_many(self, checks: Iterable[CheckItem], *, at_least_revision: str | int | None = None
                   ) -> list[Decision | SidecarError]:
        """POST /authorize/batch: in order, a Decision or that check's own error (a bad check fails alone)."""
        wanted = self._wanted(at_least_revision)
        bodies = calls.batch_bodies(checks, wanted)
        try:
            return calls.batch_results(self._call("POST", "/authorize/batch", {"checks": bodies}, self.headers),
                                       len(bodies))
        except SidecarError as exc:
            calls.stale_token(exc, wanted, self.consistency)
            return [self._no_answer(exc) for _ in bodies]

    def capabilities(self, uid: str, guid: str | None = None, target: str | None = None,
                     context: Mapping[str, Any] | None = None, *, at_least_revision: str | int | None = None
                     ) -> dict[str, Any]:
        """POST /authorize/capabilities: every action's decision for uid (in guid, on target) with the
        constraint values that apply: the answer's data (what a UI renders its buttons from)."""
        body = calls.query_body(uid, guid, target, context, self._wanted(at_least_revision))
        payload = self._call("POST", "/authorize/capabilities", body, self.headers)
        return payload["data"]  # type: ignore[no-any-return]

    def require(self, uid: str, action: str, guid: str | None = None, target: str | None = None,
                context: Mapping[str, Any] | None = None, *, at_least_revision: str | int | None = None) -> Decision:
        """check(), raising PermissionDenied on a denial."""
        return _require(self.check(uid, action, guid, target, context, at_least_revision=at_least_revision))

    def _write(self, call: Write) -> WriteToken:
        return self._written(self._call(call.method, call.path, call.body, self._write_headers(call),
                                        self.write_timeout))

    def close(self) -> None:
        if self._owner:
            self._pool.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class AsyncClient(_Base, WriteHelpers[Awaitable[WriteToken]]):
    """The sidecar over HTTP for asyncio code, on httpx.AsyncClient (retries a failed connect once)."""

    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 0.2, fail_closed: bool = False,
                 write_timeout: float = 5.0) -> None:
        super().__init__(url, api_key=api_key, timeout=timeout, fail_closed=fail_closed,
                         write_timeout=write_timeout)
        at = address(url)  # the same url rules as Client
        transport = httpx.AsyncHTTPTransport(uds=at.socket_path, retries=1)  # retries: a failed connect only
        self._http = httpx.AsyncClient(base_url=at.base_url, transport=transport, timeout=timeout,
                                       headers=self.headers)

    async def _call(self, method: str, path: str, body: Any, headers: dict[str, str] | None = None,
                    timeout: float | None = None) -> Any:
        data = orjson.dumps(body) if body is not None else None
        try:
            response = await self._http.request(method, path, content=data, headers=headers,
                                                timeout=self.timeout if timeout is None else timeout)
        except httpx.TransportError as exc:  # timeouts, refused and broken connections
            raise SidecarUnavailable(f"{method} {path} on {self.url}: {type(exc).__name__}: {exc}") from exc
        return calls.json_answer(response.status_code, response.content)

    async def check(self, uid: str, action: str, guid: str | None = None, target: str | None = None,
                    context: Mapping[str, Any] | None = None, *, at_least_revision: str | int | None = None
                    ) -> Decision:
        wanted = self._wanted(at_least_revision)
        try:
            return calls.decision_of(await self._call("POST", "/authorize", calls.check_body(
                uid, action, guid, target, context, wanted)))
        except SidecarError as exc:
            calls.stale_token(exc, wanted, self.consistency)
            return self._no_answer(exc)

    async def check_many(self, checks: Iterable[CheckItem], *, at_least_revision: str | int | None = None
                         ) -> list[Decision | SidecarError]:
        wanted = self._wanted(at_least_revision)
        bodies = calls.batch_bodies(checks, wanted)
        try:
            return calls.batch_results(await self._call("POST", "/authorize/batch", {"checks": bodies}), len(bodies))
        except SidecarError as exc:
            calls.stale_token(exc, wanted, self.consistency)
            return [self._no_answer(exc) for _ in bodies]

    async def capabilities(self, uid: str, guid: str | None = None, target: str | None = None,
                           context: Mapping[str, Any] | None = None, *, at_least_revision: str | int | None = None
                           ) -> dict[str, Any]:
        body = calls.query_body(uid, guid, target, context, self._wanted(at_least_revision))
        return (await self._call("POST", "/authorize/capabilities", body))["data"]  # type: ignore[no-any-return]

    async def require(self, uid: str, action: str, guid: str | None = None, target: str | None = None,
                      context: Mapping[str, Any] | None = None, *, at_least_revision: str | int | None = None
                      ) -> Decision:
        return _require(await self.check(uid, action, guid, target, context, at_least_revision=at_least_revision))

    async def _write_now(self, call: Write) -> WriteToken:
        headers = {"onBehalfOf": call.on_behalf_of} if call.on_behalf_of is not None else None
        return self._written(await self._call(call.method, call.path, call.body, headers, self.write_timeout))

    def _write(self, call: Write) -> Awaitable[WriteToken]:
        return self._write_now(call)

    async def aclose(self) -> None:
        if self._owner:
            await self._http.aclose()

    def __enter__(self) -> AsyncClient:
        """For `with client.session() as authz:` (leaving a session closes nothing; close the
        client itself with `async with` or aclose())."""
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        pass

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()
