"""sidecar.reload on real files: a change is handed over only once its bytes have settled, and
the bytes handed over are the bytes that were compared (tests/test_policy_settle.py does the
same through a real server under load)."""
from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

from conftest import PROJECT_DIR

from sidecar.reload import Files, PolicyWatcher, read_files, read_settled


def policy_copy(tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "policies"
    shutil.copytree(PROJECT_DIR / "policies", folder)
    shutil.copy(PROJECT_DIR / "model.conf", tmp_path / "model.conf")
    return folder, tmp_path / "model.conf"


def test_read_settled_waits_out_a_write_in_two_chunks(tmp_path: Path) -> None:
    folder, model = policy_copy(tmp_path)
    roles = folder / "roles.yaml"
    text = roles.read_bytes() + b"# edited\n"

    def write() -> None:
        with open(roles, "wb") as handle:
            handle.write(text[: len(text) // 2])
            handle.flush()
            time.sleep(0.2)
            handle.write(text[len(text) // 2:])
    writer = threading.Thread(target=write)
    writer.start()
    time.sleep(0.05)
    started = time.monotonic()
    files = read_settled(folder, model, settle_s=0.3)
    writer.join()
    assert files["roles.yaml"] == text
    assert 0.3 <= time.monotonic() - started < 2.0


def test_read_settled_is_immediate_for_files_untouched_for_long(tmp_path: Path) -> None:
    folder, model = policy_copy(tmp_path)
    time.sleep(1.1)  # longer than settle_s + the 1 s allowed for coarse timestamps
    started = time.monotonic()
    assert read_settled(folder, model, settle_s=0.05) == read_files(folder, model)
    assert time.monotonic() - started < 0.05


def test_watcher_hands_over_a_change_once_it_has_settled(tmp_path: Path) -> None:
    folder, model = policy_copy(tmp_path)
    handed: list[Files] = []
    watcher = PolicyWatcher(folder, model, handed.append, interval_s=0, settle_s=0.2,
                            loaded=read_files(folder, model))
    watcher.check_now()
    assert handed == []  # nothing changed
    roles = folder / "roles.yaml"
    roles.write_bytes(roles.read_bytes()[:300])  # half a file
    watcher.check_now()
    time.sleep(0.15)
    roles.write_bytes(roles.read_bytes() + b"x: 1\n")  # still being written: the clock starts again
    watcher.check_now()
    time.sleep(0.15)
    watcher.check_now()
    assert handed == []
    time.sleep(0.1)
    watcher.check_now()
    assert len(handed) == 1 and handed[0] == read_files(folder, model)
    watcher.check_now()
    assert len(handed) == 1  # the same files are not handed over twice
