"""The chat service's side of chatauthz: Client / AsyncClient over HTTP or a Unix socket, and
Embedded (the engine in this process). Importing this package imports no engine: Embedded is
loaded on first use. Framework guards: sidecar.client.flask, sidecar.client.fastapi; a pytest
fixture: sidecar.client.pytest_plugin.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sidecar.client.decision import Decision, WriteToken
from sidecar.client.errors import (
    BadRequest,
    Conflict,
    EpochMismatch,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RevisionNotReached,
    ServerError,
    SidecarError,
    SidecarUnavailable,
    Unauthorized,
)
from sidecar.client.http import AsyncClient, Client

if TYPE_CHECKING:
    from sidecar.client.embedded import Embedded

__all__ = ["AsyncClient", "BadRequest", "Client", "Conflict", "Decision", "Embedded", "EpochMismatch", "Forbidden",
           "NotFound", "PayloadTooLarge", "PermissionDenied", "RevisionNotReached", "ServerError", "SidecarError",
           "SidecarUnavailable", "Unauthorized", "WriteToken"]


def __getattr__(name: str) -> Any:
    if name == "Embedded":  # the engine (pycasbin and all) only for who embeds it
        from sidecar.client.embedded import Embedded
        return Embedded
    raise AttributeError(f"module 'sidecar.client' has no attribute {name!r}")
