"""Hostile input against a real server (2 workers): each is refused with a clear 4xx in the
one envelope, and afterwards the server still serves and its workers' memory has not grown."""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest

from sidecar.errors import PolicyError
from sidecar.policy import load_policy_texts
from sidecar.policy.yamlio import MAX_POLICY_FILE_BYTES

ROOT = Path(__file__).resolve().parent.parent
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.conftest import Server  # the module fixture needs the class, not a fixture
    server = Server(tmp_path_factory.mktemp("hostile") / "data", workers=2).start()
    yield server
    server.stop()


def assert_refused(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"]


def assert_still_serves(server: Any) -> None:
    for _ in range(4):  # several connections, so that both workers answer
        decision = server.authorize("alive", "sendMessage")
        assert decision["allowed"] is True


def worker_rss_kb(server: Any) -> int:
    """Total RSS of the server's process group (master and workers)."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.getpgid(int(pid)) != server.proc.pid:
                continue
            with open(f"/proc/{pid}/status") as status:
                total += next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))
        except (OSError, StopIteration):
            continue
    return total


@pytest.mark.parametrize("path", ["/authorize", "/roles"])
def test_oversized_body_is_413(hostile_server: Any, path: str) -> None:
    body = b'{"uid": "' + b"a" * (2 * 1024 * 1024) + b'"}'
    response = hostile_server.request("POST", path, data=body, headers=JSON)
    assert_refused(response, 413, "ERR_PAYLOAD_TOO_LARGE")
    assert_still_serves(hostile_server)


@pytest.mark.parametrize("path", ["/authorize", "/roles", "/authorize/batch"])
def test_deeply_nested_json_is_400(hostile_server: Any, path: str) -> None:
    body = "[" * 100_000 + "]" * 100_000
    response = hostile_server.request("POST", path, data=body, headers=JSON)
    assert_refused(response, 400, "ERR_BAD_REQUEST")
    assert_still_serves(hostile_server)


def test_huge_json_within_the_limit_is_refused_cleanly(hostile_server: Any) -> None:
    checks = [{"uid": f"u{i}", "action": "sendMessage"} for i in range(5000)]
    response = hostile_server.post("/authorize/batch", json={"checks": checks})
    assert_refused(response, 400, "ERR_BAD_REQUEST")
    assert "checks" in response.json()["error"]["details"]


@pytest.mark.parametrize("path", ["/authorize", "/roles", "/authorize/batch"])
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_wrong_content_type_is_400(hostile_server: Any, path: str, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = hostile_server.request("POST", path, data=b'{"uid": "a", "action": "sendMessage"}',
                                      headers=headers)
    assert_refused(response, 400, "ERR_BAD_REQUEST")


@pytest.mark.parametrize("path", ["/authorize", "/roles"])
def test_invalid_utf8_is_400(hostile_server: Any, path: str) -> None:
    response = hostile_server.request("POST", path, data=b'{"uid": "\xff\xfe", "action": "x", "role": "\xc3"}',
                                      headers=JSON)
    assert_refused(response, 400, "ERR_BAD_REQUEST")


@pytest.mark.parametrize("uid", ["a/b", "a\x00b", "a\nb", "..", "ü", "a b", "x" * 101, "<script>"])
def test_ids_with_path_or_control_characters_are_refused(hostile_server: Any, uid: str) -> None:
    response = hostile_server.post("/authorize", json={"uid": uid, "action": "sendMessage"})
    assert_refused(response, 400, "ERR_BAD_REQUEST")
    assert "uid" in response.json()["error"]["details"]


@pytest.mark.parametrize("raw_path", ["/users/a%00b", "/users/a%0Ab", "/roles/%C3%BC", "/users/" + "x" * 101])
def test_path_ids_with_control_characters_are_refused(hostile_server: Any, raw_path: str) -> None:
    response = hostile_server.get(raw_path)
    assert_refused(response, 400, "ERR_BAD_REQUEST")


@pytest.mark.parametrize("raw_path", ["/roles/..%2F..%2Fetc%2Fpasswd", "/users/a/b", "/../../etc/passwd"])
def test_path_traversal_finds_nothing(hostile_server: Any, raw_path: str) -> None:
    response = hostile_server.get(raw_path)
    assert response.status_code in (400, 404), response.text
    assert response.json()["error"]["code"] in ("ERR_BAD_REQUEST", "ERR_API_NOT_FOUND")


def test_non_object_bodies_are_400(hostile_server: Any) -> None:
    for body in ([], "x", 1, None, [{"uid": "a"}]):
        response = hostile_server.post("/authorize", json=body)
        assert_refused(response, 400, "ERR_BAD_REQUEST")


def test_context_facts_must_be_scalars(hostile_server: Any) -> None:
    response = hostile_server.post("/authorize", json={"uid": "a", "action": "sendMessage",
                                                       "context": {"messageType": {"$ne": "x"}}})
    assert_refused(response, 400, "ERR_BAD_REQUEST")


def test_a_half_sent_request_does_not_block_the_server(hostile_server: Any) -> None:
    with socket.create_connection(("127.0.0.1", hostile_server.port), timeout=5) as slow:
        slow.sendall(b"POST /authorize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\napikey: " + hostile_server.api_key.encode() + b"\r\n\r\n{\"uid\"")
        assert_still_serves(hostile_server)


def test_memory_stays_flat_under_repeated_hostile_input(hostile_server: Any) -> None:
    def barrage() -> None:
        for i in range(150):
            hostile_server.request("POST", "/authorize", data="[" * 50_000, headers=JSON)
            hostile_server.post("/authorize", json={"uid": f"nobody{i}", "action": "kickMembers",
                                                    "guid": f"no-such-group-{i}", "target": "x"})
            hostile_server.request("POST", "/roles", data=b"\xff" * 1000, headers=JSON)
    barrage()  # warm up allocator arenas and caches
    before = worker_rss_kb(hostile_server)
    barrage()
    after = worker_rss_kb(hostile_server)
    assert after - before < 20_000, (before, after)  # < 20 MB across master and workers
    assert_still_serves(hostile_server)


# -- policy files ---------------------------------------------------------------------------
def shipped_texts() -> tuple[dict[str, str], str]:
    names = ("catalogue.yaml", "roles.yaml", "scopes.yaml")
    return ({n: (ROOT / "policies" / n).read_text() for n in names}, (ROOT / "model.conf").read_text())


def test_yaml_alias_bomb_is_a_load_error() -> None:
    texts, model = shipped_texts()
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(9))
    texts["roles.yaml"] = bomb
    with pytest.raises(PolicyError) as refused:
        load_policy_texts(texts, model)
    assert any(p.startswith("roles.yaml:2:") and "aliases" in p for p in refused.value.problems)


def test_huge_policy_file_is_a_load_error() -> None:
    texts, model = shipped_texts()
    texts["roles.yaml"] += "#" + "x" * MAX_POLICY_FILE_BYTES + "\n"
    with pytest.raises(PolicyError) as refused:
        load_policy_texts(texts, model)
    assert any(p.startswith("roles.yaml:1:") and "larger than" in p for p in refused.value.problems)
