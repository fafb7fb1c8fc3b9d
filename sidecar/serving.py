"""Runs the Flask app under a production WSGI server: granian (default, measured fastest here)
or gunicorn. Worker processes rebuild Settings from CHATAUTHZ_* variables set from the flags.

The CLI binds the listening socket itself (listen()) and both servers serve that very socket: it has
no SO_REUSEPORT, so a port that another process holds is refused before anything says "listening",
and nothing can bind beside a running server (granian's own sockets have SO_REUSEPORT, which let a
second server share the port and the kernel split connections between two data folders)."""
from __future__ import annotations

import atexit
import errno
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from sidecar.config import Settings

SERVERS = ("granian", "gunicorn")
BACKLOG = 1024
GRACEFUL_TIMEOUT_S = 10  # SIGTERM: in-flight requests get this long, then the workers are killed
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on host:port, or OSError (EADDRINUSE when another process holds it).

    SO_REUSEADDR only lets a restart bind over connections in TIME_WAIT; without SO_REUSEPORT the
    bind fails while any other socket is bound or listening there, SO_REUSEPORT or not."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)  # the server's worker processes accept on it
    return sock


def listen_unix(path: Path) -> socket.socket:
    """A Unix socket listening at `path` (mode 0660), or OSError: EADDRINUSE while a live server
    answers there, EEXIST for a file that is not a socket. A socket file that nothing answers on
    (left by a server that died) is replaced."""
    if path.is_socket():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
            raise OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE), str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            path.unlink(missing_ok=True)  # stale: its server is gone
        finally:
            probe.close()
    elif path.exists() or path.is_symlink():
        raise OSError(errno.EEXIST, "a file that is not a socket is in the way", str(path))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    umask = os.umask(0o117)  # created 0660 at once: no moment at which others may connect
    try:
        sock.bind(str(path))
        os.chmod(path, 0o660)
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(umask)
    sock.set_inheritable(True)
    return sock


def listen_error(exc: OSError, uds: bool = False) -> str:
    if exc.errno == errno.EADDRINUSE and uds:
        return "a running server answers on this socket"
    if exc.errno == errno.EADDRINUSE:
        return "the address is already in use (is another server running on this port?)"
    return exc.strerror or str(exc)


def export_settings(settings: Settings) -> None:
    """Put every setting into CHATAUTHZ_* so that worker processes see the flags too."""
    for f in fields(settings):
        value = getattr(settings, f.name)
        name = "CHATAUTHZ_" + f.name.upper()
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = str(value)


def run(settings: Settings, sock: socket.socket) -> None:
    """Serve on `sock` (from listen()) until told to stop."""
    export_settings(settings)
    _metrics_dir(settings)
    if settings.server == "gunicorn":
        _gunicorn(settings, sock).run()
    else:
        os.register_at_fork(after_in_child=_exit_on_stop_signals)  # granian forks its workers
        _granian(settings, sock).serve()


def _metrics_dir(settings: Settings) -> None:
    """Workers share one fresh directory so that /metrics adds up every worker's values: a
    private temporary one, never in the data folder (the metric files are mmap'd, and a full data
    disk must cost writes, not workers), removed when the server exits."""
    folder, owner = tempfile.mkdtemp(prefix=f"chatauthz-metrics-{settings.port}-"), os.getpid()

    def remove() -> None:  # forked workers inherit atexit: only the server process removes it
        if os.getpid() == owner:
            shutil.rmtree(folder, ignore_errors=True)
    atexit.register(remove)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder


def worker_app() -> Any:
    """The app for one granian worker process, which exits if its server process dies (even by
    SIGKILL), and on SIGINT/SIGTERM, even while it loads or when another thread takes the signal."""
    from sidecar import threadbank
    from sidecar.api import create_app
    from sidecar.logs import configure
    configure()
    settings = Settings.from_env()
    app = create_app(settings)
    threadbank.install(settings.threads)  # the pool's threads beyond --threads wait for stalls there
    _exit_with_parent()
    _reload_on_sighup(app.extensions["chatauthz"])
    import granian._signals  # the worker calls its set_sync_signals() next, on this main thread
    granian._signals.set_sync_signals = _stop_signals
    return app


def _exit_on_stop_signals() -> None:
    """In a new worker, until _stop_signals(): SIGINT/SIGTERM exit at once, as there is nothing
    to drain yet (the handlers inherited from the server only flagged the server's copy: lost)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, lambda *_: os._exit(0))


def _stop_signals() -> Any:
    """granian's set_sync_signals(), made reliable: the event that stops this worker is set once,
    by SIGINT or SIGTERM, whichever thread the kernel hands the signal to.

    granian's own sets it from a Python handler, and Python runs handlers on the main thread only,
    which waits in Event.wait(): when another thread (a busy Rust or request thread) took the signal,
    the handler waited for a wake-up that never came, and the worker served on while the server
    waited for it forever, deaf to SIGTERM. And set() blocks for good once its one-slot channel
    is full: the worker hung in its handler on a third signal (Ctrl-C, the server's SIGTERM, one
    more). The wakeup fd is written by whichever thread took the signal: a thread of ours reads
    it and sets the event."""
    from granian._granian import WorkerSignal

    from sidecar import threadbank
    event = WorkerSignal()
    once = threading.Lock()

    def stop(*_: Any) -> None:
        if once.acquire(blocking=False):  # never released: once
            threadbank.stop()  # parked threads end their requests, as granian waits for them
            event.set()
    for signum in STOP_SIGNALS:
        signal.signal(signum, stop)
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)

    def read() -> None:
        while True:
            if not set(os.read(read_fd, 64)).isdisjoint(STOP_SIGNALS):
                stop()
    threading.Thread(target=read, name="chatauthz-stop-signals", daemon=True).start()
    return event


def _reload_on_sighup(core: Any) -> None:
    """SIGHUP to a worker reloads the policy files once they have settled (the watcher also polls)."""
    try:
        signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=core.reload_from_disk, daemon=True).start())
    except ValueError:
        pass  # not the main thread of this process: the watcher alone reloads


def _exit_with_parent(poll_s: float = 0.5) -> None:
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(0)  # orphaned: the server is gone, so must we (and free the port)
    threading.Thread(target=watch, name="chatauthz-parent-watch", daemon=True).start()


def _granian(settings: Settings, sock: socket.socket) -> Any:
    from granian.constants import Interfaces
    from granian.log import LogLevels
    from granian.net import SocketHolder  # type: ignore[attr-defined]  # (fd, uds, backlog) on Linux
    from granian.server import MPServer  # what granian.Granian is on a GIL build (the image's)

    from sidecar.logs import server_log_config

    class Server(MPServer):
        def _init_shared_socket(self) -> None:
            """Share `sock` with the (forked) workers, as granian does off Linux; on Linux each
            worker would bind a socket of its own, with SO_REUSEPORT."""
            self._ssp = None
            self._sfd = sock.fileno()  # type: ignore[assignment]
            self._sso = sock
            self._shd = SocketHolder(sock.fileno(), settings.uds is not None, BACKLOG)  # type: ignore[call-arg,assignment]

    # threadbank.RESERVE more threads than --threads, for requests that stall (a body that trickles
    # in holds its thread: api/bodies.py); the bank parks them while nothing stalls, as idle ones
    # in a pool larger than the load cost 11-37% of /authorize req/s at 16 / 64 connections here
    from sidecar import threadbank
    reserve = threadbank.RESERVE if threadbank.supported() else 0
    return Server("sidecar.serving:worker_app", address=settings.host, port=settings.port,
                  uds=settings.uds,  # only named here (logs, and unlinked at exit): `sock` is what is served
                  interface=Interfaces.WSGI, workers=settings.workers, factory=True, backlog=BACKLOG,
                  blocking_threads=settings.threads + reserve,
                  blocking_threads_idle_timeout=threadbank.IDLE_TIMEOUT_S, respawn_failed_workers=True,
                  workers_kill_timeout=GRACEFUL_TIMEOUT_S, log_level=LogLevels.warning,
                  log_dictconfig=server_log_config("_granian", "granian.access"))


def _gunicorn(settings: Settings, sock: socket.socket) -> Any:
    from gunicorn.app.base import BaseApplication  # type: ignore[import-untyped]
    from gunicorn.workers.gthread import ThreadWorker  # type: ignore[import-untyped]

    from sidecar.logs import server_log_config

    class Worker(ThreadWorker):  # type: ignore[misc]
        def handle_quit(self, sig: int, frame: Any) -> None:
            """SIGINT/SIGQUIT: stop as on SIGTERM (in-flight requests end, kept-alive connections
            close within 2 s) but take no lock and raise nothing here. The handler runs on the main
            thread wherever it is, and gthread's (tpool.shutdown(), then SystemExit) hung forever
            inside submit() or inside itself (Ctrl-C, then the server's SIGQUIT) on the pool's
            lock, or broke a lock or the app's loading with a traceback."""
            if not self.booted:
                os._exit(0)  # still loading the app: nothing to drain
            self.handle_exit(sig, frame)

    fd = sock.detach()  # gunicorn takes the socket over (and closes this descriptor after its dup)

    class App(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:  # again on SIGHUP: the same fd://, so the same socket
            options = {"bind": f"fd://{fd}", "workers": settings.workers,
                       "threads": settings.threads, "worker_class": Worker, "keepalive": 30,
                       "timeout": 60, "graceful_timeout": GRACEFUL_TIMEOUT_S, "accesslog": None,
                       "errorlog": "-", "loglevel": "warning",
                       "logconfig_dict": server_log_config("gunicorn.error", "gunicorn.access")}
            if "control_socket_disable" in self.cfg.settings:  # gunicorn >= 25
                # its control socket ($HOME/.gunicorn/gunicorn.ctl, shared by every gunicorn of the
                # user): unused here, and an error at every start where HOME is not writable
                options["control_socket_disable"] = True
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            from sidecar.api import create_app
            from sidecar.logs import configure
            configure()
            return create_app(Settings.from_env())

    return App()
