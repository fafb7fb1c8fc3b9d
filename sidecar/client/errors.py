"""What the client raises: the sidecar's error envelope as typed exceptions, and the denial.

SidecarError(code, message, status, details)
 ├─ BadRequest          400 (the caller's mistake; details name the fields)
 ├─ Unauthorized        401 AUTH_ERR_EMPTY_APIKEY, AUTH_ERR_APIKEY_NOT_FOUND
 ├─ Forbidden           403 AUTH_ERR_NO_ACCESS, a refused onBehalfOf write (its decision's code)
 ├─ NotFound            404
 ├─ Conflict            409 (EpochMismatch: ERR_REVISION_EPOCH_MISMATCH)
 ├─ PayloadTooLarge     413
 ├─ ServerError         5xx (RevisionNotReached: ERR_REVISION_NOT_REACHED; ERR_STORE_UNAVAILABLE)
 └─ SidecarUnavailable  no answer: timeout, refused or broken connection (ERR_SIDECAR_UNAVAILABLE)
PermissionDenied is no SidecarError: it is require()'s answer to a denial, and carries the Decision.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sidecar.client.decision import Decision

UNAVAILABLE = "ERR_SIDECAR_UNAVAILABLE"


class SidecarError(Exception):
    """An error answer of the sidecar ({"error": {code, message, details}}), or none at all."""

    code = "ERR_INTERNAL"
    status: int | None = None

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.details = details

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class BadRequest(SidecarError):
    code, status = "ERR_BAD_REQUEST", 400


class Unauthorized(SidecarError):
    code, status = "AUTH_ERR_APIKEY_NOT_FOUND", 401


class Forbidden(SidecarError):
    code, status = "AUTH_ERR_NO_ACCESS", 403


class NotFound(SidecarError):
    code, status = "ERR_API_NOT_FOUND", 404


class Conflict(SidecarError):
    code, status = "ERR_CONFLICT", 409


class EpochMismatch(Conflict):
    """The atLeastRevision token is of another store epoch: the write it names may be lost."""

    code = "ERR_REVISION_EPOCH_MISMATCH"


class PayloadTooLarge(SidecarError):
    code, status = "ERR_PAYLOAD_TOO_LARGE", 413


class ServerError(SidecarError):
    code, status = "ERR_INTERNAL", 500


class RevisionNotReached(ServerError):
    code, status = "ERR_REVISION_NOT_REACHED", 503


class SidecarUnavailable(SidecarError):
    """No answer from the sidecar: a timeout, a refused connection, a connection lost mid-call."""

    code = UNAVAILABLE


class PermissionDenied(Exception):
    """require() on a denial: the decision's code and reason, and the Decision itself."""

    def __init__(self, decision: Decision) -> None:
        super().__init__(f"{decision.code}: {decision.reason}")
        self.code = decision.code or "ERR_PERMISSION_DENIED"
        self.reason = decision.reason
        self.decision = decision


BY_CODE: dict[str, type[SidecarError]] = {"ERR_REVISION_EPOCH_MISMATCH": EpochMismatch,
                                          "ERR_REVISION_NOT_REACHED": RevisionNotReached}
BY_STATUS: dict[int, type[SidecarError]] = {400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound,
                                            409: Conflict, 413: PayloadTooLarge}


def error_for(status: int | None, code: str | None, message: str,
              details: dict[str, Any] | None = None) -> SidecarError:
    """The typed error of an envelope (status None: a batch item's error, typed by its code)."""
    kind = BY_CODE.get(code or "")
    if kind is None and status is not None:
        kind = BY_STATUS.get(status) or (ServerError if status >= 500 else SidecarError)
    if kind is None:
        kind = BadRequest if code == "ERR_BAD_REQUEST" else SidecarError
    return kind(message, code=code or None, status=status, details=details)
