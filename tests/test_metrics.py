"""GET /metrics adds up every worker's values, exactly (issue 10, item 11).

Through a real 2-worker server (granian, then gunicorn): W writes (one more refused) and K
decisions (singles spread over both workers, and one batch), then /metrics is parsed with
prometheus_client's own parser. Decisions by result, writes by result, the decision and request
histograms' counts, the revision, staleness and the policy hash must be exactly what the answers
said. Then a policy reload: the hash follows, the old one is gone, the reload is logged at INFO,
and every line on stderr is JSON. Then a worker is killed: the counts it made stay, its gauges go.
"""
from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import Server
from prometheus_client.parser import text_string_to_metric_families
from test_policy_reload import PolicyServer, copy_policies, set_support_line
from test_policy_settle import worker_pids

Samples = list[tuple[str, dict[str, str], float]]
ACTIONS = ("createGroup", "blockUser", "initiateCall")
ROLES = ("support", "restricted")


class Scraper:
    """Scrapes /metrics and counts its own scrapes (a scrape is counted from the next one on)."""

    def __init__(self, srv: Server) -> None:
        self.srv, self.scrapes = srv, 0

    def __call__(self) -> Samples:
        response = self.srv.get("/metrics", apikey=None)
        assert response.status_code == 200, response.text
        self.scrapes += 1
        return [(s.name, dict(s.labels), s.value)
                for family in text_string_to_metric_families(response.text) for s in family.samples]


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(value for n, got, value in samples if n == name and all(got.get(k) == v for k, v in labels.items()))


def series(samples: Samples, name: str) -> list[tuple[dict[str, str], float]]:
    return [(labels, value) for n, labels, value in samples if n == name]


def wait_gauges(scrape: Scraper, revision: int, policy_hash: str, timeout: float = 5.0,
                decisions: int | None = None) -> Samples:
    """Each worker refreshes its gauges, and adds what /authorize counted, every second (the
    scraped one at once): poll, bounded (counts only ever grow, so the first match is exact)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape()
        if (series(samples, "chatauthz_revision") == [({}, revision)]
                and series(samples, "chatauthz_policy_info") == [({"hash": policy_hash}, 1.0)]
                and (decisions is None or total(samples, "chatauthz_decisions_total") == decisions)):
            return samples
        assert time.monotonic() < deadline, (series(samples, "chatauthz_revision"),
                                             series(samples, "chatauthz_policy_info"))
        time.sleep(0.1)


def stderr_records(srv: Server) -> list[dict[str, Any]]:
    lines = [line for line in srv.stderr().splitlines() if line.strip()]
    bad = [line for line in lines if not _is_json_object(line)]
    assert not bad, bad[:5]
    return [json.loads(line) for line in lines]


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


@pytest.mark.parametrize("server_kind", ["granian", "gunicorn"])
def test_metrics_add_up_every_worker_exactly(tmp_path: Path, server_kind: str) -> None:
    folder = copy_policies(tmp_path)
    srv = PolicyServer(tmp_path / "data", workers=2, log_dir=tmp_path / "logs",
                       extra_env={"CHATAUTHZ_SERVER": server_kind, "CHATAUTHZ_POLICY_WATCH_S": "0.1",
                                  "CHATAUTHZ_POLICY_SETTLE_S": "0.2"},
                       extra_args=["--policies", str(folder)])
    srv.start()
    try:
        _check(srv, folder, Scraper(srv), server_kind)
    finally:
        srv.stop()


def _check(srv: PolicyServer, folder: Path, scrape: Scraper, server_kind: str) -> None:
    # before any traffic: nothing counted but the start-up's /health/live probes (a probe that timed
    # out on a busy machine was still answered and counted, so their number is read, not assumed)
    samples = scrape()
    assert total(samples, "chatauthz_decisions_total") == total(samples, "chatauthz_writes_total") == 0
    probes = total(samples, "chatauthz_request_seconds_count", route="/health/live")
    assert probes >= 1 and total(samples, "chatauthz_request_seconds_count") == probes

    # W writes, each committed with its own revision, and one refused (unknown role)
    uids = [f"metrics-{i}" for i in range(6)]
    revisions = [srv.ok("PUT", f"/users/{uid}", {"role": ROLES[i % 2]})["revision"] for i, uid in enumerate(uids)]
    assert revisions == sorted(set(revisions)), revisions
    assert srv.put("/users/metrics-x", {"role": "no-such-role"}).status_code == 404
    writes = len(revisions)

    # K decisions: singles (each on a new connection, so both workers answer) and one batch
    askers = [*uids, "metrics-unassigned"]  # the last one has the default role
    answers: list[dict[str, Any]] = []
    with ThreadPoolExecutor(4) as pool:  # concurrent, or one worker may win every accept
        for _round in range(10):  # rounds of 60 until both workers have answered (a busy machine may
            start = len(answers)  # let one worker win every accept of a round)
            answers += pool.map(lambda i: srv.authorize(askers[i % len(askers)], ACTIONS[i % len(ACTIONS)]),
                                range(start, start + 60))
            if len({a["decisionId"].rpartition("-")[0] for a in answers}) == 2:
                break
    singles = len(answers)
    batch = srv.ok("POST", "/authorize/batch", {"checks": [{"uid": uid, "action": "createGroup"} for uid in uids[:3]]})
    answers += batch["data"]["results"]
    assert len({a["decisionId"].rpartition("-")[0] for a in answers[:singles]}) == 2, "both workers must have answered"
    by_result = Counter("allowed" if a["allowed"] else "denied" for a in answers)
    assert by_result["allowed"] and by_result["denied"], by_result
    hashes = {a["policyHash"] for a in answers}
    assert len(hashes) == 1, hashes

    samples = wait_gauges(scrape, revisions[-1], hashes.pop(), decisions=len(answers))
    report = {"K": len(answers), "W": writes, "expected": dict(by_result),
              "decisions": {r: total(samples, "chatauthz_decisions_total", result=r) for r in ("allowed", "denied")},
              "writes": {r: total(samples, "chatauthz_writes_total", result=r) for r in ("committed", "refused")},
              "decision_count": total(samples, "chatauthz_decision_seconds_count"),
              "revision": series(samples, "chatauthz_revision")}
    print(f"{server_kind} metrics: {report}")
    assert report["decisions"] == {"allowed": by_result["allowed"], "denied": by_result["denied"]}, report
    assert report["writes"] == {"committed": writes, "refused": 1}, report
    assert report["decision_count"] == len(answers), report
    assert total(samples, "chatauthz_decision_seconds_bucket", le="+Inf") == len(answers)
    requests = {("/authorize", "POST"): singles, ("/authorize/batch", "POST"): 1, ("/users/<uid>", "PUT"): writes + 1,
                ("/health/live", "GET"): probes, ("/metrics", "GET"): scrape.scrapes - 1}
    for (route, method), count in requests.items():
        assert total(samples, "chatauthz_request_seconds_count", route=route, method=method) == count, (route, count)
    assert total(samples, "chatauthz_request_seconds_count") == sum(requests.values())
    assert total(samples, "chatauthz_request_seconds_count", route="/users/<uid>", status="404") == 1
    assert series(samples, "chatauthz_staleness_seconds") == [({}, 0.0)]  # the embedded store: never stale
    assert series(samples, "chatauthz_policy_invalid") == [({}, 0.0)]

    # a policy reload: the new hash only, logged at INFO; nothing but JSON on stderr
    set_support_line(folder, 13, "      createGroup: allow")
    deadline = time.monotonic() + 5
    while (new := srv.authorize(uids[0], "createGroup"))["allowed"] is not True:
        assert time.monotonic() < deadline, new
        time.sleep(0.05)
    streak = 0
    while streak < 20:  # in a row: both workers
        streak = streak + 1 if srv.authorize(uids[0], "createGroup")["policyHash"] == new["policyHash"] else 0
        assert time.monotonic() < deadline + 5, "both workers serving the new policy"
    samples = wait_gauges(scrape, revisions[-1], new["policyHash"])
    records = stderr_records(srv)
    reloads = [r for r in records if r["message"] == f"policy reloaded: now serving {new['policyHash']}"]
    assert len(reloads) == 2 and {r["level"] for r in reloads} == {"INFO"}, records

    # a worker dies: what it counted (and had added, at most a second after) stays, its gauges go
    time.sleep(1.5)  # no traffic now: every worker has added all it counted
    counted = total(scrape(), "chatauthz_decisions_total")
    victim = worker_pids(srv)[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while victim in (pids := worker_pids(srv)) or len(pids) < 2:
        assert time.monotonic() < deadline, pids
        time.sleep(0.1)
    samples = wait_gauges(scrape, revisions[-1], new["policyHash"])
    assert total(samples, "chatauthz_decisions_total") == counted
    mapped = [line.split()[-1] for line in Path(f"/proc/{pids[0]}/maps").read_text().splitlines()
              if "/chatauthz-metrics-" in line]  # the worker's mmap'd metric files
    assert mapped, "the worker maps no metric file"
    folder = Path(mapped[0]).parent
    assert srv.data_dir not in folder.parents  # never in the data folder
    folder_files = os.listdir(folder)
    assert not [f for f in folder_files if f.startswith("gauge_") and f.endswith(f"_{victim}.db")], folder_files
    stderr_records(srv)


def test_clients_cannot_mint_metric_series(server: Server) -> None:
    """An unknown HTTP method is labelled "other": without a key, a client could otherwise add a
    histogram series per made-up method and grow every worker's memory and each scrape (found by
    an outside attack)."""
    for n in range(5):
        assert server.request(f"ZZPROBE{n}", "/").status_code in (404, 405)
    scrape = Scraper(server)
    samples = scrape()
    methods = {labels.get("method") for name, labels, _ in samples if name == "chatauthz_request_seconds_count"}
    assert not {m for m in methods if m and m.startswith("ZZPROBE")}, methods
    assert total(samples, "chatauthz_request_seconds_count", method="other") == 5
