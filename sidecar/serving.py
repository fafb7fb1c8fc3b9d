"""Runs the Flask app under a production WSGI server: granian (default, measured fastest here)
or gunicorn. Worker processes rebuild Settings from CHATAUTHZ_* variables set from the flags."""
from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from dataclasses import fields
from typing import Any

from sidecar.config import Settings

SERVERS = ("granian", "gunicorn")


def export_settings(settings: Settings) -> None:
    """Put every setting into CHATAUTHZ_* so that worker processes see the flags too."""
    for f in fields(settings):
        value = getattr(settings, f.name)
        name = "CHATAUTHZ_" + f.name.upper()
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = str(value)


def run(settings: Settings) -> None:
    export_settings(settings)
    _metrics_dir(settings)
    if settings.server == "gunicorn":
        _gunicorn(settings).run()
    else:
        _granian(settings).serve()


def _metrics_dir(settings: Settings) -> None:
    """Workers share one fresh directory so that /metrics adds up every worker's values."""
    folder = settings.data_dir.resolve() / "metrics"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)


def worker_app() -> Any:
    """The app for one worker process, which exits if its server process dies (even by SIGKILL)."""
    from sidecar.api import create_app
    from sidecar.logs import configure
    configure()
    app = create_app(Settings.from_env())
    _exit_with_parent()
    _reload_on_sighup(app.extensions["chatauthz"])
    return app


def _reload_on_sighup(core: Any) -> None:
    """SIGHUP to a worker re-reads the policy files at once (the watcher also polls)."""
    try:
        signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=core.reload_policy, daemon=True).start())
    except ValueError:
        pass  # not the main thread of this process: the watcher alone reloads


def _exit_with_parent(poll_s: float = 0.5) -> None:
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(0)  # orphaned: the server is gone, so must we (and free the port)
    threading.Thread(target=watch, name="chatauthz-parent-watch", daemon=True).start()


def _granian(settings: Settings) -> Any:
    from granian import Granian
    from granian.constants import Interfaces
    from granian.log import LogLevels
    # blocking_threads is NOT raised to outlast stalled bodies (see api/bodies.py): a pool larger
    # than the load's concurrency cost 11% / 37% of /authorize req/s at 16 / 64 connections here
    return Granian("sidecar.serving:worker_app", address=settings.host, port=settings.port,
                   interface=Interfaces.WSGI, workers=settings.workers, factory=True,
                   blocking_threads=settings.threads, respawn_failed_workers=True, log_level=LogLevels.warning)


def _gunicorn(settings: Settings) -> Any:
    from gunicorn.app.base import BaseApplication

    class App(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            options = {"bind": f"{settings.host}:{settings.port}", "workers": settings.workers,
                       "threads": settings.threads, "worker_class": "gthread", "keepalive": 30,
                       "timeout": 60, "graceful_timeout": 10, "accesslog": None,
                       "errorlog": "-", "loglevel": "warning"}
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            from sidecar.api import create_app
            from sidecar.logs import configure
            configure()
            return create_app(Settings.from_env())

    return App()
