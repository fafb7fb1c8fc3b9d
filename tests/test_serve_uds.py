"""`chatauthz serve --uds PATH` under granian and gunicorn: mode 0660, answers the client, refuses
a path a live server answers on (exit 2, one line, before "listening"), replaces a stale socket
file left by a killed server, never removes a file that is not a socket, and removes its socket
on a graceful stop."""
from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.client import Client
from tests.client_support import UdsServer
from tests.conftest import TEST_API_KEY, server_env

pytestmark = pytest.mark.integration


def serve(sock: Path, data_dir: Path, server: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sidecar", "serve", "--uds", str(sock), "--data-dir", str(data_dir),
                           "--server", server], capture_output=True, text=True, timeout=60,
                          env=server_env(TEST_API_KEY))


@pytest.mark.parametrize("kind", ["granian", "gunicorn"])
def test_serve_on_a_unix_socket(kind: str, tmp_path: Path) -> None:
    sock = tmp_path / "chatauthz.sock"
    srv = UdsServer(tmp_path / "data", sock, server=kind, log_dir=tmp_path / "logs")
    srv.start()
    try:
        assert stat.S_IMODE(sock.stat().st_mode) == 0o660 and stat.S_ISSOCK(sock.stat().st_mode)
        assert f"listening on unix://{sock}" in srv.stdout()
        with Client(srv.url, api_key=TEST_API_KEY, timeout=5.0) as client:
            uid = "someone"
            token = client.set_role(uid, "support")
            assert client.check(uid, "createGroup").code == "ERR_PERMISSION_DENIED"
            assert token.revision == 1
        second = serve(sock, tmp_path / "other", kind)
        assert second.returncode == 2
        assert second.stderr.strip().splitlines() == [f"chatauthz: cannot listen on unix:{sock}: a running server "
                                                      "answers on this socket"]
        assert "listening" not in second.stdout and not (tmp_path / "other").exists()
        srv.kill()  # SIGKILL: the socket file stays behind, with nothing answering on it
        assert sock.is_socket()
        srv.start()  # the stale file is replaced
        with Client(srv.url, api_key=TEST_API_KEY, timeout=5.0) as client:
            assert client.check(uid, "createGroup").code == "ERR_PERMISSION_DENIED"
        srv.stop()
        assert not sock.exists()  # a graceful stop removes it
    finally:
        srv.stop()


def test_a_file_that_is_not_a_socket_is_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "important.txt"
    path.write_text("keep me")
    result = serve(path, tmp_path / "data", "granian")
    assert result.returncode == 2 and "not a socket" in result.stderr and "listening" not in result.stdout
    assert path.read_text() == "keep me"
