"""The decision log (issue 5): JSON lines that match the HTTP answers they were logged for.

A server started with `--decision-log FILE` answers allowed and denied checks (single and batch);
each answer's decisionId has exactly one line, with the same allowed, code, reason, layer,
policyHash and revision, and the input (uid, action, guid, target, context). With
`--decision-log-deny-only` only denials are logged. A log path that cannot be written (a
directory) never changes nor fails a decision.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Server

LOG_WAIT_S = 5.0
GUID, OWNER, ADMIN, MOD, PART, OUTSIDER = "dl-group", "dl-owner", "dl-admin", "dl-mod", "dl-part", "dl-outsider"
AGENT, RESTRICTED = "dl-agent", "dl-restricted"

# (uid, action, guid, target, context): a mix of allowed and denied decisions at every layer
CHECKS: list[tuple[str, str, str | None, str | None, dict[str, Any] | None]] = [
    (PART, "sendMessage", GUID, None, {"messageType": "text"}),                 # allowed (scope)
    (AGENT, "sendMessage", None, None, None),                                  # allowed (role)
    (AGENT, "createGroup", None, None, None),                                  # denied: role
    (RESTRICTED, "sendMessage", None, None, {"messageType": "image"}),         # denied: constraint
    (RESTRICTED, "joinGroup", None, None, None),                               # denied: restricted feature
    (OUTSIDER, "sendMessage", GUID, None, {"messageType": "text"}),            # denied: membership
    (PART, "kickMembers", GUID, MOD, None),                                    # denied: scope
    (MOD, "kickMembers", GUID, ADMIN, None),                                   # denied: clearance
    (MOD, "kickMembers", GUID, PART, None),                                    # allowed (clearance)
    (ADMIN, "changeScope", GUID, PART, {"newScope": "moderator"}),             # allowed
    (MOD, "changeScope", GUID, MOD, {"newScope": "participant"}),              # denied: self action
    (OWNER, "deleteGroup", GUID, None, None),                                  # allowed (owner)
]


class LoggingServer(Server):
    """The conftest Server, started with extra command-line flags."""

    def __init__(self, *args: Any, extra_args: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.extra_args = extra_args

    @property
    def command(self) -> list[str]:
        return [*super().command, *self.extra_args]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Any]:
    started: list[Server] = []

    def run(name: str, extra_args: list[str], workers: int = 1) -> Server:
        server = LoggingServer(tmp_path / name / "data", workers=workers, log_dir=tmp_path / name / "logs",
                               extra_args=extra_args)
        started.append(server)
        server.start()
        return server

    yield run
    for server in started:
        server.stop()


def set_up_world(srv: Server) -> None:
    srv.ok("PUT", f"/users/{AGENT}", {"role": "support"})
    srv.ok("PUT", f"/users/{RESTRICTED}", {"role": "restricted"})
    srv.ok("PUT", f"/groups/{GUID}", {"owner": OWNER})
    srv.ok("POST", f"/groups/{GUID}/members", {"admins": [ADMIN], "moderators": [MOD], "participants": [PART]})


def ask_everything(srv: Server) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Every check, one by one and then all in one batch: [(input, decision)]."""
    answers = []
    for uid, action, guid, target, context in CHECKS:
        decision = srv.authorize(uid, action, guid=guid, target=target, context=context)
        answers.append(({"uid": uid, "action": action, "guid": guid, "target": target, "context": context or {}},
                        decision))
    batch = [{k: v for k, v in zip(("uid", "action", "guid", "target", "context"), check, strict=True)
              if v is not None} for check in CHECKS]
    response = srv.post("/authorize/batch", {"checks": batch})
    assert response.status_code == 200, response.text
    for check, result in zip(CHECKS, response.json()["data"]["results"], strict=True):
        uid, action, guid, target, context = check
        answers.append(({"uid": uid, "action": action, "guid": guid, "target": target, "context": context or {}},
                        result))
    kinds = {d["allowed"] for _, d in answers}
    assert kinds == {True, False}, answers
    return answers


def read_log(path: Path, expected_lines: int) -> list[dict[str, Any]]:
    """The log's lines once there are `expected_lines` of them (bounded wait; it is written aside)."""
    deadline = time.monotonic() + LOG_WAIT_S
    lines: list[str] = []
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= expected_lines:
            break
        time.sleep(0.02)
    time.sleep(0.2)  # and nothing more arrives
    lines = path.read_text().splitlines() if path.exists() else []
    assert len(lines) == expected_lines, f"{len(lines)} log lines, expected {expected_lines}:\n" + "\n".join(lines)
    return [json.loads(line) for line in lines]


def assert_entry_matches(entry: dict[str, Any], given: dict[str, Any], decision: dict[str, Any]) -> None:
    assert entry["decisionId"] == decision["decisionId"]
    for key in ("allowed", "reason", "layer", "policyHash", "revision"):
        assert entry[key] == decision[key], (key, entry, decision)
    assert entry["code"] == decision.get("code"), (entry, decision)
    assert entry["input"] == given, (entry, given)
    assert isinstance(entry["time"], float) and abs(entry["time"] - time.time()) < 60, entry


@pytest.mark.parametrize("workers", [1, 2])
def test_every_answer_has_exactly_one_matching_log_line(tmp_path: Path, start: Any, workers: int) -> None:
    log = tmp_path / f"decisions-{workers}.jsonl"
    srv = start(f"log{workers}", ["--decision-log", str(log)], workers=workers)
    set_up_world(srv)
    answers = ask_everything(srv)
    # a caller's error is not a decision and is not logged
    assert srv.post("/authorize", {"uid": AGENT, "action": "noSuchAction"}).status_code == 400
    entries = read_log(log, len(answers))
    by_id: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        by_id.setdefault(entry["decisionId"], []).append(entry)
    assert set(by_id) == {d["decisionId"] for _, d in answers}
    for given, decision in answers:
        matching = by_id[decision["decisionId"]]
        assert len(matching) == 1, matching
        assert_entry_matches(matching[0], given, decision)
    assert all(e["revision"] == srv.revision() for e in entries)


def test_deny_only_logs_denials_alone(tmp_path: Path, start: Any) -> None:
    log = tmp_path / "denials.jsonl"
    srv = start("denyonly", ["--decision-log", str(log), "--decision-log-deny-only"])
    set_up_world(srv)
    answers = ask_everything(srv)
    denied = [(g, d) for g, d in answers if not d["allowed"]]
    entries = read_log(log, len(denied))
    assert {e["decisionId"] for e in entries} == {d["decisionId"] for _, d in denied}
    by_id = {e["decisionId"]: e for e in entries}
    for given, decision in denied:
        assert_entry_matches(by_id[decision["decisionId"]], given, decision)
    assert all(e["allowed"] is False and e["code"] for e in entries)


def test_an_unwritable_log_never_changes_a_decision(tmp_path: Path, start: Any) -> None:
    unwritable = tmp_path / "a-directory"
    unwritable.mkdir()
    plain = start("plain", [])
    broken = start("broken", ["--decision-log", str(unwritable)])
    for srv in (plain, broken):
        set_up_world(srv)
    expected = ask_everything(plain)
    for _ in range(3):  # the failing writes happen aside: ask again after they failed
        got = ask_everything(broken)
        assert len(got) == len(expected)
        for (given, want), (given_too, have) in zip(expected, got, strict=True):
            assert given == given_too
            strip = {k: v for k, v in want.items() if k not in ("decisionId", "token")}  # per process / store
            assert {k: v for k, v in have.items() if k not in ("decisionId", "token")} == strip, (given, want, have)
        time.sleep(0.1)
    assert broken.running and list(unwritable.iterdir()) == []
    assert broken.get("/health/live").status_code == 200
    deadline = time.monotonic() + LOG_WAIT_S  # the writes did fail (and said so), aside from the answers
    while "decision log write failed" not in broken.stderr() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "decision log write failed" in broken.stderr(), broken.stderr()[-2000:]

