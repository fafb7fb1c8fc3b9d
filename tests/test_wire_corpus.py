"""One wire layer: the same bad body gets the same status, code and message on /authorize (the
fast path), /authorize/batch and the Flask routes, through a real server.

Before sidecar.wire held the content-type rule, the reader and the envelope, the two paths
disagreed: `application/jsonx` was accepted by the fast path and refused by Flask,
`application/vnd.x+json; charset=utf-8` the reverse, deep JSON was "not valid JSON" on one and
"nested too deeply" on the other, and their 500s said different things.
"""
from __future__ import annotations

from typing import Any

import pytest
from conftest import Server

from sidecar import wire
from sidecar.config import Settings

ROUTES = [("POST", "/authorize"), ("POST", "/authorize/batch"), ("POST", "/roles"), ("PUT", "/groups/corpus"),
          ("PUT", "/users/corpus")]
JSON = "application/json"
DEEP = b"[" * 5000 + b"]" * 5000
FAULTS: dict[str, tuple[str | None, bytes]] = {
    "no content type": (None, b'{"uid": "a"}'),
    "text/plain": ("text/plain", b'{"uid": "a"}'),
    "application/jsonx": ("application/jsonx", b'{"uid": "a"}'),
    "application/x-www-form-urlencoded": ("application/x-www-form-urlencoded", b"uid=a"),
    "json in a parameter only": ("text/plain; type=application/json", b'{"uid": "a"}'),
    "invalid JSON": (JSON, b'{"uid": '),
    "empty body": (JSON, b""),
    "NaN": (JSON, b'{"uid": NaN}'),
    "invalid UTF-8": (JSON, b'{"uid": "\xff"}'),
    "deep JSON": (JSON, DEEP),
    "deep object": (JSON, b'{"a":' * 3000 + b"1" + b"}" * 3000),
    "duplicate keys": (JSON, b'{"uid": "a", "uid": "b"}'),
    "a list": (JSON, b"[]"),
    "a string": (JSON, b'"uid"'),
    "a number": (JSON, b"7"),
    "null": (JSON, b"null"),
    "too large": (JSON, b'{"uid": "' + b"a" * (Settings().max_body_bytes + 1) + b'"}'),
}
ACCEPTED = ["application/json", "application/json; charset=utf-8", "APPLICATION/JSON",
            "application/vnd.x+json; charset=utf-8", "application/merge-patch+json"]


def answer(server: Server, method: str, path: str, content_type: str | None, body: bytes) -> tuple[int, Any]:
    headers = {"Content-Type": content_type} if content_type is not None else {}
    response = server.request(method, path, data=body, headers=headers)
    return response.status_code, response.json().get("error")


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_bad_body_is_refused_alike_on_every_route(shared_server: Server, fault: str) -> None:
    content_type, body = FAULTS[fault]
    answers = {f"{method} {path}": answer(shared_server, method, path, content_type, body) for method, path in ROUTES}
    first = next(iter(answers.values()))
    assert first[0] in (400, 413) and first[1] is not None, answers
    assert all(one == first for one in answers.values()), answers
    assert shared_server.get("/users/corpus").json()["data"]["role"] == "default"  # nothing written
    assert shared_server.get("/groups/corpus").status_code == 404


@pytest.mark.parametrize("content_type", ACCEPTED)
def test_json_content_types_are_accepted_alike(shared_server: Server, content_type: str) -> None:
    body = b'{"uid": "corpus", "action": "createGroup", "checks": [{"uid": "corpus", "action": "createGroup"}]}'
    for method, path in ROUTES:
        status, error = answer(shared_server, method, path, content_type, body)
        assert error is None or error["message"] != wire.NOT_JSON, (content_type, method, path, status, error)
    for path in ("/authorize", "/authorize/batch"):
        one = {"uid": "corpus", "action": "createGroup"}
        data = wire.orjson.dumps(one if path == "/authorize" else {"checks": [one]})
        assert answer(shared_server, "POST", path, content_type, data)[0] == 200


def test_the_two_error_builders_are_one() -> None:
    """The fast path and Flask both render sidecar.wire.error_body; a 500 says the same on both."""
    status, body = wire.error_body(RuntimeError("boom"))
    assert status == 500 and body == {"error": {"code": "ERR_INTERNAL", "message": wire.INTERNAL}}
    assert "boom" not in str(body)


def test_an_answer_sent_before_the_body_was_read_closes_the_connection(shared_server: Server) -> None:
    """A refused key (or a non-JSON body) is answered without reading the body; its bytes may
    still be on the way, so the answer says Connection: close (a keep-alive client's next request
    on it was a broken pipe). An answer after reading the body keeps the connection."""
    import http.client
    body = b'{"uid": "a", "action": "sendMessage"}'
    conn = http.client.HTTPConnection("127.0.0.1", shared_server.port, timeout=5)
    try:
        for _ in range(2):  # kept alive: two answers on one connection
            conn.request("POST", "/authorize", body, {"Content-Type": "application/json",
                                                      "apikey": shared_server.api_key or ""})
            response = conn.getresponse()
            response.read()
            assert response.status == 200 and response.getheader("Connection") != "close"
        for headers in ({"Content-Type": "application/json", "apikey": "wrong"},
                        {"Content-Type": "text/plain", "apikey": shared_server.api_key or ""}):
            conn.request("POST", "/authorize", body, headers)
            response = conn.getresponse()
            response.read()
            assert response.status in (400, 401) and response.getheader("Connection") == "close", headers
            conn.close()
    finally:
        conn.close()
