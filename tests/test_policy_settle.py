"""A policy file rewritten in place is taken only once it has settled (issue 10, item 3).

An editor or `cp` rewrites roles.yaml non-atomically: truncate, write the first half, (150 ms),
write the rest. The first half of the edited file is valid YAML in which the `support` role has
no permissions at all, so a support user would be allowed blockUser, which both the old and the
new file deny. Under load through a real 2-worker server, none of these half files may ever be
served: no decision names the half file's policy hash, and no support user is allowed blockUser;
each full edit is served once it has settled. The same holds for SIGHUP sent to the workers
while the half file is on disk.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from conftest import Server
from test_policy_reload import Load, PolicyServer, Sample, copy_policies, worker_of

from sidecar.policy import load_policy_texts
from sidecar.policy.loader import POLICY_FILES

WATCH_S, SETTLE_S = "0.05", "0.3"
AGENT = "settle-agent"
OLD_SUPPORT = "      createGroup: deny\n      blockUser: deny\n"
NEW_SUPPORT = "      createGroup: allow\n      blockUser: deny\n"


def policy_hash(folder: Path, roles_text: str) -> str:
    """The content hash the sidecar gives these files (PolicySet.content_hash, by its own loader)."""
    texts = {name: (folder / name).read_text(encoding="utf-8") for name in POLICY_FILES}
    texts["roles.yaml"] = roles_text
    return load_policy_texts(texts, (folder.parent / "model.conf").read_text(encoding="utf-8")).content_hash


def two_chunk_write(path: Path, text: str, between: float = 0.15) -> None:
    """Truncate, write the first half, wait, write the rest: a non-atomic rewrite in place."""
    data = text.encode()
    with open(path, "wb") as handle:
        handle.write(data[: len(data) // 2])
        handle.flush()
        time.sleep(between)
        handle.write(data[len(data) // 2:])


def worker_pids(srv: Server) -> list[int]:
    """The server's worker processes: the master's children that run the same command."""
    assert srv.proc is not None
    master = srv.proc.pid
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    own = Path(f"/proc/{master}/cmdline").read_bytes()
    return [int(pid) for pid in children if Path(f"/proc/{pid}/cmdline").read_bytes() == own]


def versions(folder: Path) -> dict[str, tuple[str, str]]:
    """'old' and 'new' roles.yaml: their full text, and the hash of their first half."""
    old = (folder / "roles.yaml").read_text()
    assert OLD_SUPPORT in old
    new = old.replace(OLD_SUPPORT, NEW_SUPPORT, 1)
    out = {}
    for name, text in (("old", old), ("new", new)):
        half = text.encode()[: len(text.encode()) // 2].decode()
        assert "  support:" in half and "blockUser" not in half.split("  support:")[1], half
        out[name] = (text, policy_hash(folder, half))  # a valid policy: the old code served it
    return out


def wait_served(load: Load, expected: str, since: float, workers: int, timeout: float = 5.0) -> None:
    def last(samples: list[Sample]) -> dict[str, str]:
        return {worker_of(x): x.data["policyHash"] for x in samples if x.start > since and x.status == 200}
    try:
        load.wait_for(lambda s: len(found := last(s)) == workers and set(found.values()) == {expected}, timeout, "")
    except AssertionError:
        raise AssertionError(f"not every worker served {expected} within {timeout}s: {last(load.snapshot())}") from None


def assert_never_half(samples: list[Sample], half_hashes: set[str], full_hashes: set[str]) -> None:
    assert samples and all(x.status == 200 for x in samples), [x for x in samples if x.status != 200][:3]
    served = {x.data["policyHash"] for x in samples}
    assert not served & half_hashes, (served & half_hashes, sum(x.data["policyHash"] in half_hashes for x in samples))
    assert served <= full_hashes, served
    allowed = [x for x in samples if x.data["allowed"]]
    assert not allowed, (len(allowed), allowed[:2])


def start(tmp_path: Path, folder: Path, watch: str) -> PolicyServer:
    srv = PolicyServer(tmp_path / "data", workers=2, log_dir=tmp_path / "logs",
                       extra_env={"CHATAUTHZ_POLICY_WATCH_S": watch, "CHATAUTHZ_POLICY_SETTLE_S": SETTLE_S},
                       extra_args=["--policies", str(folder)])
    srv.start()
    srv.ok("PUT", f"/users/{AGENT}", {"role": "support"})
    return srv


def test_half_written_files_are_never_served_by_the_watcher(tmp_path: Path) -> None:
    folder = copy_policies(tmp_path)
    files = versions(folder)
    full = {policy_hash(folder, text) for text, _ in files.values()}
    srv = start(tmp_path, folder, WATCH_S)
    try:
        with Load(srv, {"uid": AGENT, "action": "blockUser"}, threads=2) as load:
            load.wait_for(lambda s: len({worker_of(x) for x in s}) == 2, 10, "both workers answering")
            for i in range(50):
                text, _ = files["new" if i % 2 == 0 else "old"]
                written = time.monotonic()
                two_chunk_write(folder / "roles.yaml", text)
                wait_served(load, policy_hash(folder, text), written, workers=2)
        samples = load.snapshot()
    finally:
        srv.stop()
    assert len(samples) > 200, len(samples)
    assert_never_half(samples, {half for _, half in files.values()}, full)
    assert {x.data["policyHash"] for x in samples} == full


def test_sighup_during_a_half_write_waits_for_the_whole_file(tmp_path: Path) -> None:
    folder = copy_policies(tmp_path)
    files = versions(folder)
    full = {policy_hash(folder, text) for text, _ in files.values()}
    srv = start(tmp_path, folder, "0")  # no watcher: SIGHUP alone reloads
    try:
        with Load(srv, {"uid": AGENT, "action": "blockUser"}, threads=2) as load:
            load.wait_for(lambda s: len({worker_of(x) for x in s}) == 2, 10, "both workers answering")
            pids = worker_pids(srv)
            assert len(pids) == 2, pids
            for i in range(6):
                text, _ = files["new" if i % 2 == 0 else "old"]
                path = folder / "roles.yaml"
                data = text.encode()
                written = time.monotonic()
                with open(path, "wb") as handle:  # the two-chunk write, SIGHUP while half is on disk
                    handle.write(data[: len(data) // 2])
                    handle.flush()
                    time.sleep(0.05)
                    for pid in pids:
                        os.kill(pid, signal.SIGHUP)
                    time.sleep(0.1)
                    handle.write(data[len(data) // 2:])
                wait_served(load, policy_hash(folder, text), written, workers=2)
            assert worker_pids(srv) == pids  # the workers reloaded in place, no restart
        samples = load.snapshot()
    finally:
        srv.stop()
    assert_never_half(samples, {half for _, half in files.values()}, full)
    assert {x.data["policyHash"] for x in samples} == full
