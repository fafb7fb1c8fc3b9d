"""The Flask app factory. Builds nothing at import time; the Sidecar lives in app.extensions."""
from __future__ import annotations

from flask import Flask

from sidecar.api import authorize, changes, errors, groups, health, roles
from sidecar.api.auth import install_auth
from sidecar.api.fastpath import AuthorizeFastPath
from sidecar.config import Settings
from sidecar.core import Sidecar
from sidecar.keys import KeyRing, load_keys
from sidecar.policy import load_policy
from sidecar.stores import SQLiteStore
from sidecar.stores.redisstore import RedisStore
from sidecar.sync import RedisSync

MAX_BODY_BYTES = 1024 * 1024


def build_sidecar(settings: Settings, *, start_sync: bool = True) -> Sidecar:
    """Policy (refusing an invalid one) + the store: Redis when configured, else embedded SQLite."""
    policy = load_policy(settings.policies, settings.model_path)
    if settings.redis_url:
        store = RedisStore(settings.redis_url, settings.redis_prefix, settings.redis_timeout_s)
        core = Sidecar(policy, store, revision_wait_s=settings.revision_wait_s,
                       max_staleness_s=settings.max_staleness_s, synced=True)
        core.sync = RedisSync(store.client, store.channel, core.catch_up, interval_s=settings.sync_interval_s)
        if start_sync:
            core.sync.start()
        return core
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = SQLiteStore(settings.data_dir / "chatauthz.sqlite3")
    return Sidecar(policy, store, revision_wait_s=settings.revision_wait_s,
                   max_staleness_s=settings.max_staleness_s)


def create_app(settings: Settings | None = None, *, sidecar: Sidecar | None = None,
               keys: KeyRing | None = None) -> Flask:
    settings = settings or Settings.from_env()
    app = Flask("chatauthz")
    app.config.update(MAX_CONTENT_LENGTH=MAX_BODY_BYTES, JSON_SORT_KEYS=False)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.json.compact = True  # type: ignore[attr-defined]
    app.extensions["chatauthz"] = sidecar or build_sidecar(settings)
    app.extensions["chatauthz.settings"] = settings
    app.extensions["chatauthz.keys"] = keys or load_keys(settings.data_dir, settings.api_key,
                                                         settings.authorize_key)
    errors.install(app)
    install_auth(app)
    for blueprint in (authorize.bp, roles.bp, groups.bp, changes.bp, health.bp):
        app.register_blueprint(blueprint)
    app.wsgi_app = AuthorizeFastPath(app, MAX_BODY_BYTES)  # type: ignore[method-assign]
    return app
