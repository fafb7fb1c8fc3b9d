"""One error hierarchy for the whole sidecar; the API turns each into one JSON envelope.

ChatAuthzError(code, message, status, details)
 ├─ BadRequestError        ERR_BAD_REQUEST 400 (details: field -> [messages])
 ├─ NotFoundError          ERR_*_NOT_FOUND 404
 ├─ ConflictError          409 / 400 state conflicts (ERR_ROLE_ALREADY_EXISTS, ...)
 ├─ RefusedError           403 refusals (ERR_ROLE_DELETE_DENIED, ERR_PERMISSION_DENIED, ...)
 ├─ AuthError              AUTH_ERR_* 401 / 403
 ├─ StoreError             ERR_STORE_UNAVAILABLE 503 (ERR_STORE_REPLACED: the file went away)
 └─ PolicyError            invalid policy files (problems: "file:line: message")
A denial by the engine is not an error: it is a Decision with allowed=False.
"""
from __future__ import annotations

from typing import Any


class ChatAuthzError(Exception):
    code = "ERR_INTERNAL"
    status = 500

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body


class BadRequestError(ChatAuthzError):
    code = "ERR_BAD_REQUEST"
    status = 400

    @classmethod
    def field(cls, name: str, problem: str) -> BadRequestError:
        return cls(f"The request is invalid: {name}: {problem}", details={name: [problem]})


class NotFoundError(ChatAuthzError):
    status = 404


class ConflictError(ChatAuthzError):
    status = 400


class RefusedError(ChatAuthzError):
    status = 403


class AuthError(ChatAuthzError):
    status = 401


class StoreError(ChatAuthzError):
    code = "ERR_STORE_UNAVAILABLE"
    status = 503


class PolicyError(ChatAuthzError):
    """The policy files are invalid; `problems` lists every one as 'file:line: message'."""

    code = "ERR_INVALID_POLICY"
    status = 500

    def __init__(self, problems: list[str]) -> None:
        self.problems = sorted(problems, key=_problem_sort_key)
        super().__init__("invalid policy:\n  " + "\n  ".join(self.problems))


def _problem_sort_key(problem: str) -> tuple[str, int, str]:
    file, _, rest = problem.partition(":")
    line, _, message = rest.partition(":")
    return (file, int(line) if line.isdigit() else 0, message)
