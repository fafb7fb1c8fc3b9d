"""Every error leaves as {"error": {"code", "message", "details"?}} with its status."""
from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from sidecar.errors import ChatAuthzError

log = logging.getLogger("chatauthz.api")

HTTP_CODES = {404: ("ERR_API_NOT_FOUND", "The API endpoint is invalid. Please verify the API call."),
              405: ("ERR_METHOD_NOT_ALLOWED", "This method is not allowed on this endpoint."),
              413: ("ERR_PAYLOAD_TOO_LARGE", "The request body is too large."),
              400: ("ERR_BAD_REQUEST", "The request is invalid.")}


def envelope(code: str, message: str, status: int, details: dict[str, Any] | None = None) -> tuple[Response, int]:
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error["details"] = details
    return jsonify({"error": error}), status


def install(app: Flask) -> None:
    @app.errorhandler(ChatAuthzError)
    def on_chatauthz_error(exc: ChatAuthzError) -> tuple[Response, int]:
        return envelope(exc.code, exc.message, exc.status, exc.details)

    @app.errorhandler(HTTPException)
    def on_http_error(exc: HTTPException) -> tuple[Response, int]:
        status = exc.code or 500
        code, message = HTTP_CODES.get(status, (f"ERR_HTTP_{status}", exc.description or "HTTP error"))
        response, status = envelope(code, message, status)
        if status == 405 and exc.valid_methods:  # type: ignore[attr-defined]
            response.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
        return response, status

    @app.errorhandler(Exception)
    def on_unexpected(exc: Exception) -> tuple[Response, int]:
        log.exception("unhandled error")
        return envelope("ERR_INTERNAL", "Internal error; the request changed nothing it could not "
                        "finish. See the server log.", 500)
