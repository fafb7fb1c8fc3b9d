"""A FastAPI dependency (import this module only where FastAPI is installed):

    authz = FastAPIAuthz(AsyncClient(...))          # or a Client / Embedded (run in a thread)
    @app.post("/groups/{guid}/messages")
    async def send(guid: str, decision: Decision = Depends(authz.require(
            "sendMessage", uid=lambda r: r.headers["x-user"], guid=lambda r: r.path_params["guid"]))): ...

A denial raises HTTPException(403, {"code", "message", "reason"}); no answer from the sidecar
503 with code ERR_SIDECAR_UNAVAILABLE (with a fail_closed client: a 403 with that code). Any other
SidecarError propagates (the app's error). The dependency's value is the allowing Decision.
"""
from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import HTTPException, Request
from starlette.concurrency import run_in_threadpool

from sidecar.client.decision import Decision
from sidecar.client.errors import UNAVAILABLE, SidecarUnavailable

Source = Callable[[Request], Any] | str | None  # read from the request (may be async), or a constant


async def _value(source: Any, request: Request) -> Any:
    value = source(request) if callable(source) else source
    return await value if inspect.isawaitable(value) else value


class FastAPIAuthz:
    """Guards FastAPI routes with an AsyncClient (awaited) or a Client / Embedded (in a thread)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def require(self, action: str, *, uid: Source, guid: Source = None, target: Source = None,
                context: Callable[[Request], Any] | Mapping[str, Any] | None = None
                ) -> Callable[[Request], Awaitable[Decision]]:
        async def dependency(request: Request) -> Decision:
            args = [await _value(uid, request), action, await _value(guid, request),
                    await _value(target, request), await _value(context, request)]
            try:
                if inspect.iscoroutinefunction(self.client.check):
                    decision: Decision = await self.client.check(*args)
                else:
                    decision = await run_in_threadpool(self.client.check, *args)
            except SidecarUnavailable as exc:
                raise HTTPException(503, {"code": UNAVAILABLE, "message": exc.message}) from exc
            if not decision.allowed:
                code = decision.code or "ERR_PERMISSION_DENIED"
                raise HTTPException(403, {"code": code, "message": decision.reason, "reason": decision.reason})
            return decision
        return dependency
