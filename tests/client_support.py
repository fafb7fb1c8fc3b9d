"""Helpers for the client tests: a real sidecar served on a Unix socket, and a socket that
accepts connections but never answers (for timeouts)."""
from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from sidecar.client import Client, SidecarError
from tests.conftest import START_TIMEOUT_S, Server


class UdsServer(Server):
    """`chatauthz serve --uds PATH` (granian or gunicorn) in its own process group."""

    def __init__(self, data_dir: Path, sock: Path, *, server: str = "granian", **kwargs: Any) -> None:
        super().__init__(data_dir, **kwargs)
        self.sock = sock
        self.server_kind = server

    @property
    def url(self) -> str:
        return f"unix://{self.sock}"

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", "sidecar", "serve", "--uds", str(self.sock), "--data-dir", str(self.data_dir),
                "--workers", str(self.workers), "--server", self.server_kind]

    def _wait_live(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        with Client(self.url, api_key=self.api_key, timeout=1.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    pytest.fail(f"the server exited with {self.proc.returncode}; stderr:\n{self.stderr()}")
                try:
                    client.check("probe", "createGroup")
                    return
                except SidecarError:
                    time.sleep(0.05)
        self._killpg()
        pytest.fail(f"the UDS server did not answer within {START_TIMEOUT_S}s; stderr:\n{self.stderr()}")


@contextmanager
def silent_server() -> Iterator[str]:
    """http://127.0.0.1:<port> of a socket that accepts and reads but never answers."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
                held.append(conn)
            except OSError:
                continue
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(2)
        for conn in held:
            conn.close()
        listener.close()
