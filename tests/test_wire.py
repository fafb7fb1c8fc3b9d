"""sidecar.wire.loads, the one JSON reader of every route: duplicate keys at any depth are a 400;
its fast duplicate test agrees with a full second parse on generated bodies (hypothesis); and
through a real server, every route refuses them the same way."""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar import wire
from sidecar.errors import BadRequestError
from tests.conftest import Server

KEYS = st.sampled_from(["a", "b", "uid", "messageType", "x\\", 'q"', ":", "\u00e9", "a:b", " "])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.text(max_size=6),
                    st.sampled_from([":", '":', "\\", "a\":b"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.lists(st.tuples(KEYS, inner), max_size=4)),
                      max_leaves=12)


def render(value: Any, rng: random.Random) -> str:
    """JSON text for a value in which lists of pairs are objects, keys possibly repeated, with
    random whitespace around the colons (as other encoders write it)."""
    if isinstance(value, tuple) or (isinstance(value, list) and value and all(isinstance(v, tuple) for v in value)):
        pairs = value if isinstance(value, list) else [value]
        space = lambda: rng.choice(["", " ", "\n", "\t "])  # noqa: E731
        return "{" + ",".join(f"{json.dumps(k)}{space()}:{space()}{render(v, rng)}" for k, v in pairs) + "}"
    if isinstance(value, list):
        return "[" + ",".join(render(v, rng) for v in value) + "]"
    return json.dumps(value)


def has_duplicates(text: str) -> bool:
    found = False

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal found
        found = found or len({k for k, _ in pairs}) != len(pairs)
        return dict(pairs)
    json.loads(text, object_pairs_hook=hook)
    return found


@settings(max_examples=400, deadline=None)
@given(value=VALUES, seed=st.integers(0, 2**16))
def test_fast_duplicate_test_agrees_with_a_full_parse(value: Any, seed: int) -> None:
    text = render(value, random.Random(seed))
    expected_dup = has_duplicates(text)
    try:
        parsed = wire.loads(text.encode())
    except BadRequestError as exc:
        assert expected_dup, (text, exc.message)
        assert "twice" in exc.message
        return
    assert not expected_dup, text
    assert parsed == json.loads(text)


@pytest.mark.parametrize("body", [
    b'{"uid":"a","action":"sendMessage","context":{"messageType":"video","messageType":"text"}}',
    b'{"uid":"a","uid":"b","action":"sendMessage"}',
    b'{"checks":[{"uid":"a","action":"x"},{"uid":"a","action":"x","action":"y"}]}',
    b'{"a\\u0062":1,"ab":2}',
])
def test_duplicates_anywhere_are_refused(body: bytes) -> None:
    with pytest.raises(BadRequestError) as refused:
        wire.loads(body)
    assert "body" in (refused.value.details or {})


def test_deep_nesting_and_constants_are_a_400() -> None:
    for body in (b"[" * 5000 + b"]" * 5000, b'{"a": NaN}', b'{"a": Infinity}', b"\xff"):
        with pytest.raises(BadRequestError):
            wire.loads(body)


@pytest.mark.parametrize(("method", "path"), [("POST", "/authorize"), ("POST", "/authorize/batch"),
                                              ("POST", "/roles"), ("PUT", "/users/dupe"),
                                              ("PUT", "/groups/dupe"), ("POST", "/groups/dupe/members")])
def test_every_route_refuses_duplicate_keys(shared_server: Server, method: str, path: str) -> None:
    body = b'{"role": "support", "owner": "a", "uid": "a", "action": "sendMessage", "uid": "b"}'
    if path == "/authorize/batch":
        body = b'{"checks": [{"uid": "a", "action": "sendMessage", "uid": "b"}]}'
    response = shared_server.request(method, path, data=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "ERR_BAD_REQUEST" and "twice" in error["message"], error
    assert shared_server.get("/users/dupe").json()["data"]["role"] == "default"  # nothing written


# -- every answer leaves as one chunk ----------------------------------------------------------
def test_every_answer_is_one_chunk_so_kept_alive_clients_never_wait_on_nagle(tmp_path: Path) -> None:
    """Given an iterator, granian writes the headers and each chunk apart, and a kept-alive
    client's delayed ACK then held a Flask answer ~40 ms: every management call (every write of
    sidecar.client) took 44 ms. The WSGI app hands granian one chunk for every route."""
    from io import BytesIO

    from sidecar.api import create_app
    from sidecar.compose import build_sidecar
    from sidecar.config import Settings
    key = "test-chunk-key-0123456789"
    settings = Settings(data_dir=tmp_path, api_key=key, policy_watch_s=0)
    core = build_sidecar(settings, start_threads=False)
    try:
        app = create_app(settings, sidecar=core)
        for method, path, body in [("PUT", "/users/u1", b'{"role": "support"}'), ("GET", "/roles", b""),
                                   ("GET", "/openapi.json", b""), ("GET", "/nowhere", b""),
                                   ("POST", "/authorize", b'{"uid": "u1", "action": "createGroup"}')]:
            environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "SERVER_NAME": "t", "SERVER_PORT": "1",
                       "wsgi.url_scheme": "http", "wsgi.input": BytesIO(body), "CONTENT_LENGTH": str(len(body)),
                       "CONTENT_TYPE": "application/json", "HTTP_APIKEY": key, "SERVER_PROTOCOL": "HTTP/1.1"}
            statuses: list[str] = []
            answer = app.wsgi_app(environ, lambda status, headers, *_, seen=statuses: seen.append(status))
            assert type(answer) is list and len(answer) == 1 and isinstance(answer[0], bytes), (path, type(answer))
            assert statuses and answer[0], path
    finally:
        core.store.close()
