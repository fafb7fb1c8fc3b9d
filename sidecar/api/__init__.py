"""The Flask app factory. Builds nothing at import time; the Sidecar lives in app.extensions."""
from __future__ import annotations

from typing import Any

from flask import Flask
from flask.json.provider import DefaultJSONProvider

from sidecar import wire
from sidecar.api import authorize, changes, errors, groups, health, openapi, ops, roles
from sidecar.api.auth import install_auth
from sidecar.api.fastpath import AuthorizeFastPath
from sidecar.api.ops import install_request_timing
from sidecar.compose import build_sidecar
from sidecar.config import Settings
from sidecar.core import Sidecar
from sidecar.keys import KeyRing, load_keys


class StrictJSONProvider(DefaultJSONProvider):
    """Flask reads request bodies with sidecar.wire, as the /authorize fast path does: NaN,
    Infinity and duplicate keys are a 400, never stored."""

    sort_keys = False
    compact = True

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return wire.loads(s)


def create_app(settings: Settings | None = None, *, sidecar: Sidecar | None = None,
               keys: KeyRing | None = None) -> Flask:
    settings = settings or Settings.from_env()
    app = Flask("chatauthz", static_folder=None)  # no /static/<path>: it served the working folder, no key
    app.config.update(MAX_CONTENT_LENGTH=settings.max_body_bytes)
    app.json = StrictJSONProvider(app)
    app.extensions["chatauthz"] = sidecar or build_sidecar(settings)
    app.extensions["chatauthz.settings"] = settings
    app.extensions["chatauthz.keys"] = keys or load_keys(settings.data_dir, settings.api_key,
                                                         settings.authorize_key)
    openapi.install(app, settings)  # the document states this app's limits
    errors.install(app)
    install_auth(app)
    install_request_timing(app)
    for blueprint in (authorize.bp, roles.bp, groups.bp, changes.bp, health.bp, ops.bp, openapi.bp):
        app.register_blueprint(blueprint)
    app.wsgi_app = AuthorizeFastPath(app, settings.max_body_bytes)  # type: ignore[method-assign]
    return app
