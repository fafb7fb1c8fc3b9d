"""The apikey header: a full-access key for everything, an authorize-only key for /authorize."""
from __future__ import annotations

from flask import Flask, current_app, g, request

from sidecar.api import authorize
from sidecar.errors import AuthError, BadRequestError
from sidecar.keys import AUTH_ONLY, ApiKey, KeyRing

OPEN_ENDPOINTS = {"health.live", "health.ready", "ops.prometheus", "openapi.openapi_json", "openapi.docs"}
AUTHORIZE_ENDPOINTS = authorize.ENDPOINTS  # the fast path's routes
# The writes decided as the onBehalfOf user; everywhere else the header would be ignored: a 400.
ON_BEHALF_ENDPOINTS = {"groups.set_group", "groups.delete_group", "groups.add_members", "groups.set_member",
                       "groups.remove_member", "groups.ban", "groups.unban"}
ON_BEHALF_ONLY_THERE = ("onBehalfOf is taken only by group, member and ban writes; elsewhere it would "
                        "be ignored and the call made with the key's full rights")


def install_auth(app: Flask) -> None:
    @app.before_request
    def check_key() -> None:
        if request.endpoint is None or request.endpoint in OPEN_ENDPOINTS:
            return  # unknown routes answer 404/405 without revealing anything
        keys: KeyRing = current_app.extensions["chatauthz.keys"]
        key = authenticate(keys, request.headers.get("apikey", ""), request.endpoint in AUTHORIZE_ENDPOINTS)
        g.actor = key.name
        if "onBehalfOf" in request.headers and request.endpoint not in ON_BEHALF_ENDPOINTS:
            raise BadRequestError.field("onBehalfOf", ON_BEHALF_ONLY_THERE)


def authenticate(keys: KeyRing, presented: str, authorize_only: bool) -> ApiKey:
    """The key for this header value, or the AUTH_ERR_* refusal."""
    if not presented:
        raise AuthError("The apikey header is missing.", code="AUTH_ERR_EMPTY_APIKEY")
    key = keys.find(presented)
    if key is None:
        raise AuthError("The apikey is not valid.", code="AUTH_ERR_APIKEY_NOT_FOUND")
    if key.scope == AUTH_ONLY and not authorize_only:
        raise AuthError("This key may only call /authorize.", code="AUTH_ERR_NO_ACCESS", status=403)
    return key
