"""A data folder that cannot work stops `chatauthz serve` before it listens; a disk that fills
up while it runs makes /health/ready say "degraded" until a write succeeds again.

Real folders: a read-only bind mount, random bytes, a damaged page in a real database and a
small tmpfs that is full. Mounting needs root (tests skip, saying so, where it is impossible).
"""
from __future__ import annotations

import functools
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import PROJECT_DIR, Server, free_port, server_env, unique

from sidecar.stores.sqlite import SQLiteStore

DB = "chatauthz.sqlite3"
CLI_TIMEOUT_S = 30.0


def mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True, timeout=10)
    if result.returncode != 0:
        pytest.skip(f"cannot mount here (needs root and mount rights): {result.stderr.strip()}")


def umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=10)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An empty 4 MiB tmpfs."""
    where = tmp_path / "small"
    where.mkdir()
    mount("-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(where))
    yield where
    umount(where)


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(source, view): `view` shows the folder `source` through a read-only bind mount."""
    source, view = tmp_path / "source", tmp_path / "view"
    source.mkdir()
    view.mkdir()
    mount("--bind", str(source), str(view))
    try:
        mount("-o", "remount,bind,ro", str(view))
        yield source, view
    finally:
        umount(view)


def fill(folder: Path) -> Path:
    """Fill the file system of `folder` to its last byte; returns the filler file."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as out:
        for size in (1 << 16, 4096, 1):
            try:
                while True:
                    out.write(b"\0" * size)
            except OSError:
                pass
    return filler


def serve(data_dir: Path) -> subprocess.CompletedProcess[str]:
    """`chatauthz serve` on data_dir; it must exit by itself within CLI_TIMEOUT_S."""
    command = [sys.executable, "-m", "sidecar", "serve", "--host", "127.0.0.1", "--port", str(free_port()),
               "--data-dir", str(data_dir), "--workers", "2"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=PROJECT_DIR,
                            env=server_env("test-key-0123456789abcdef"), stdin=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=CLI_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=CLI_TIMEOUT_S)
        pytest.fail(f"serve did not stop by itself within {CLI_TIMEOUT_S}s:\n{out}\n{err}")
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def assert_refused(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and "listening" not in result.stdout + result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def user_ops(first: int, end: int) -> list[dict[str, Any]]:
    return [{"op": "put_user", "uid": f"user-{i:06d}-{'x' * 40}", "role": "restricted"} for i in range(first, end)]


def real_database(folder: Path, users: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    store = SQLiteStore(folder / DB)
    for start in range(0, users, 500):
        store.write(functools.partial(user_ops, start, min(start + 500, users)), "test")
    store.close()
    return folder / DB


def test_read_only_folder_refuses_to_start(read_only: tuple[Path, Path]) -> None:
    source, view = read_only
    assert_refused(serve(view), str(view), "read-only")
    real_database(source)  # and with a database already in it
    assert_refused(serve(view), str(view), "read-only")


def test_malformed_database_refuses_to_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / DB).write_bytes(os.urandom(64 * 1024))
    assert_refused(serve(data), DB)


def test_damaged_page_refuses_to_start(tmp_path: Path) -> None:
    db = real_database(tmp_path / "data", users=3000)
    page_size = 4096
    pages = db.stat().st_size // page_size
    assert pages > 20
    with open(db, "r+b") as out:  # garble the page headers of a run of pages in the middle
        for page in range(pages // 2, pages // 2 + 4):
            out.seek(page * page_size)
            out.write(b"\x0d\xff\xff\xff\xff\xff\xff\xff" * 8)
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA quick_check").fetchone()[0] != "ok"  # the damage is real
    conn.close()
    assert_refused(serve(db.parent), DB, "damaged")


def test_deleted_database_refuses_to_start_empty(tmp_path: Path) -> None:
    """Its .rev (and any -wal) outlive it: starting on a new, empty database would lose every write."""
    db = real_database(tmp_path / "data", users=10)
    db.unlink()
    assert_refused(serve(db.parent), DB, "missing")
    assert not db.exists()


def test_other_database_refuses_to_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    conn = sqlite3.connect(data / DB)
    conn.executescript("CREATE TABLE other (x INTEGER); INSERT INTO other VALUES (1);")
    conn.close()
    assert_refused(serve(data), DB, "not a chatauthz store")


def test_full_disk_refuses_to_start(small_disk: Path) -> None:
    real_database(small_disk / "data")
    fill(small_disk)
    assert_refused(serve(small_disk / "data"), "full")


def test_data_folder_that_is_a_file_refuses_to_start(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    assert_refused(serve(tmp_path / "file"), str(tmp_path / "file"))


def test_full_disk_while_running_is_degraded_until_a_write_succeeds(small_disk: Path) -> None:
    srv = Server(small_disk / "data", workers=2, log_dir=small_disk.parent / "logs")
    srv.start()
    try:
        uid = unique("restricted")
        srv.ok("PUT", f"/users/{uid}", {"role": "restricted"})
        assert srv.ok("GET", "/health/ready")["data"]["status"] == "ready"
        filler = fill(small_disk)
        failed = None
        for _ in range(200):  # the WAL may still have room for a few small writes
            response = srv.post("/roles", {"role": unique("big"), "name": "Big", "description": "d" * 250,
                                           "metadata": {"blob": "m" * 3900}})
            if not response.ok:
                failed = response
                break
        assert failed is not None, "no write failed on a full disk"
        assert failed.status_code == 503, failed.text
        assert failed.json()["error"]["code"] == "ERR_STORE_UNAVAILABLE", failed.text
        for _ in range(10):  # both workers say so, and still decide correctly
            ready = srv.get("/health/ready")
            assert ready.status_code == 200, ready.text
            body = ready.json()["data"]
            assert body["status"] == "degraded" and any("full" in r for r in body["reasons"]), body
            assert srv.authorize(uid, "joinGroup")["allowed"] is False
        filler.unlink()
        srv.ok("PUT", f"/users/{unique('again')}", {"role": "support"})
        for _ in range(10):
            assert srv.ok("GET", "/health/ready")["data"]["status"] == "ready"
    finally:
        srv.stop()
