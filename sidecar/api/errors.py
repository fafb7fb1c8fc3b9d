"""Every error leaves as {"error": {"code", "message", "details"?}} with its status, built by
sidecar.wire.error_body (the fast path's builder too); Werkzeug's HTTP errors are mapped first."""
from __future__ import annotations

import logging

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from sidecar import wire
from sidecar.errors import ChatAuthzError

log = logging.getLogger("chatauthz.api")

HTTP_CODES = {404: ("ERR_API_NOT_FOUND", "The API endpoint is invalid. Please verify the API call."),
              405: ("ERR_METHOD_NOT_ALLOWED", "This method is not allowed on this endpoint."),
              400: ("ERR_BAD_REQUEST", "The request is invalid.")}


def as_error(exc: HTTPException) -> ChatAuthzError:
    """A Werkzeug HTTP error as the sidecar's own (a 413 is wire's, as on the fast path)."""
    status = exc.code or 500
    if status == 413:
        return wire.PayloadTooLargeError()
    code, message = HTTP_CODES.get(status, (f"ERR_HTTP_{status}", exc.description or "HTTP error"))
    return ChatAuthzError(message, code=code, status=status)


def render(exc: BaseException) -> tuple[Response, int]:
    status, body = wire.error_body(exc)
    return jsonify(body), status


def install(app: Flask) -> None:
    @app.errorhandler(ChatAuthzError)
    def on_chatauthz_error(exc: ChatAuthzError) -> tuple[Response, int]:
        return render(exc)

    @app.errorhandler(HTTPException)
    def on_http_error(exc: HTTPException) -> tuple[Response, int]:
        response, status = render(as_error(exc))
        if status == 405 and exc.valid_methods:  # type: ignore[attr-defined]
            response.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
        return response, status

    @app.errorhandler(Exception)
    def on_unexpected(exc: Exception) -> tuple[Response, int]:
        log.exception("unhandled error")
        return render(exc)
