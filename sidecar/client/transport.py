"""The sync client's keep-alive pool: stdlib http.client connections over TCP or a Unix socket.

Why not httpx.Client here: on one keep-alive connection its request and response models, h11
and two writes per request (headers, then body) cost about twice a bare http.client call on
this 2-core machine (bench/bench_client.py prints both), and the issue's budget is 20%. An
http.client request with a bytes body is one write. AsyncClient is on httpx.

A connection is reused only while it is idle and not readable (a server that closed it, say on
restart, makes it readable at EOF): such a one is dropped before use, so a restarted sidecar
costs no error; nor is one that answered an error (the sidecar's fast path answers a 401 without
reading the body, and the server then drops the connection unannounced). A failed connect (or a request the server closed the connection on before reading it) is retried once; nothing else is retried (a check or write
may have reached the sidecar).
"""
from __future__ import annotations

import http.client
import select
import socket
import threading
from typing import NamedTuple
from urllib.parse import urlsplit

from sidecar.client.errors import SidecarUnavailable

MAX_IDLE = 32


class _TCP(http.client.HTTPConnection):
    def connect(self) -> None:
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Unix(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Address(NamedTuple):
    socket_path: str | None  # a Unix socket, or None: TCP
    host: str
    port: int
    prefix: str  # a path the routes sit under (behind a proxy)
    where: str  # for messages

    @property
    def base_url(self) -> str:
        """httpx's base_url (a Unix socket's requests are for http://chatauthz)."""
        return "http://chatauthz" if self.socket_path is not None else f"{self.where}{self.prefix}"


def address(url: str) -> Address:
    """`http://host:port[/prefix]` or `unix:///path/to.sock`, else ValueError."""
    parts = urlsplit(url)
    if parts.scheme == "unix" and parts.path:
        return Address(parts.path, "localhost", 0, "", f"unix://{parts.path}")
    if parts.scheme == "http" and parts.hostname:
        return Address(None, parts.hostname, parts.port or 80, parts.path.rstrip("/"), f"http://{parts.netloc}")
    raise ValueError(f"the sidecar's url must be http://host:port or unix:///path/to.sock, got {url!r}")


class Pool:
    """Connections to one sidecar, at most MAX_IDLE of them kept idle."""

    def __init__(self, url: str, timeout: float) -> None:
        self.address = at = address(url)
        self.socket_path, self.host, self.port, self.prefix, self.where = at
        self.timeout = timeout
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self.closed = False

    def _new(self) -> http.client.HTTPConnection:
        if self.socket_path is not None:
            return _Unix(self.socket_path, self.timeout)
        return _TCP(self.host, self.port, timeout=self.timeout)

    def _take(self) -> http.client.HTTPConnection:
        """An idle connection still open, else a new connected one (one retry of a failed connect)."""
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                break
            if conn.sock is not None and not select.select([conn.sock], [], [], 0)[0]:
                return conn
            conn.close()  # closed by the server (or stray bytes): never reuse it
        conn = self._new()
        try:
            conn.connect()
        except OSError:
            conn = self._new()
            try:
                conn.connect()
            except OSError as exc:
                raise SidecarUnavailable(f"cannot connect to {self.where}: {_why(exc)}") from exc
        return conn

    def request(self, method: str, path: str, body: bytes | None, headers: dict[str, str],
                timeout: float | None = None) -> tuple[int, bytes]:
        """(status, body) of one request; SidecarUnavailable when no whole answer came."""
        if self.closed:
            raise RuntimeError("the client is closed")
        conn = self._take()
        wait = self.timeout if timeout is None else timeout
        if conn.sock is not None and conn.timeout != wait:
            conn.timeout = wait
            conn.sock.settimeout(wait)
        try:
            try:
                conn.request(method, self.prefix + path, body, headers)
            except (BrokenPipeError, ConnectionResetError):
                # closed before it read the request (so it did nothing with it): part of connecting
                conn.close()
                conn = self._take()
                conn.request(method, self.prefix + path, body, headers)
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise SidecarUnavailable(f"{method} {path} on {self.where}: {_why(exc)}") from exc
        if response.will_close or response.status >= 400:
            conn.close()  # after an error the server may drop the connection unannounced (a 401 with the body unread)
        else:
            with self._lock:
                if len(self._idle) < MAX_IDLE and not self.closed:
                    self._idle.append(conn)
                    conn = None  # type: ignore[assignment]
            if conn is not None:
                conn.close()
        return response.status, data

    def close(self) -> None:
        with self._lock:
            self.closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
