"""PUT /users/<uid> and PUT /groups/<guid>/members/<uid> are answered in front of Flask
(api/fastpath.py, WRITES). Every request here is sent to two fresh apps, one through the whole
WSGI stack (the fast path) and one straight to Flask's own routes: the statuses, the bodies
(revision and token included, up to the store's epoch), the log lines and the answers of later
reads are the same, errors and edge cases included."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import Client

from sidecar.api import create_app
from sidecar.api.fastpath import AuthorizeFastPath
from sidecar.config import Settings

REPO = Path(__file__).resolve().parents[1]
KEY, AUTH_KEY = "fast-writes-key-0123456789abcdef", "fast-writes-authorize-only-key-01"
FULL = {"apikey": KEY}
REQUESTS: list[tuple[str, str, Any, dict[str, str]]] = [
    ("PUT", "/groups/g1", {"owner": "own"}, FULL),
    ("PUT", "/groups/g1/members/mod", {"scope": "moderator"}, FULL),
    ("PUT", "/users/alice", {"role": "support"}, FULL),
    ("PUT", "/users/alice", {"role": "support"}, FULL),  # unchanged
    ("PUT", "/users/alice", {"role": "no-such-role"}, FULL),
    ("PUT", "/users/alice", {"role": "default", "extra": 1}, FULL),
    ("PUT", "/users/alice", "not an object", FULL),
    ("PUT", "/users/alice", None, FULL),  # no body
    ("PUT", "/users/b%C3%A9atrice", {"role": "support"}, FULL),  # an id Werkzeug decodes
    ("PUT", "/users/%FF", {"role": "support"}, FULL),  # not UTF-8
    ("PUT", "/users/has%20space", {"role": "support"}, FULL),
    ("PUT", "/users/alice/", {"role": "support"}, FULL),  # not the rule: Flask's 404 either way
    ("PUT", "/users/alice", {"role": "support"}, {}),  # no key
    ("PUT", "/users/alice", {"role": "support"}, {"apikey": "wrong"}),
    ("PUT", "/users/alice", {"role": "support"}, {"apikey": AUTH_KEY}),  # authorize-only key
    ("PUT", "/users/alice", {"role": "restricted"}, {**FULL, "onBehalfOf": "mod"}),  # not taken here
    ("PUT", "/groups/g1/members/pat", {"scope": "participant"}, {**FULL, "onBehalfOf": "mod"}),
    ("PUT", "/groups/g1/members/pat", {"scope": "admin"}, {**FULL, "onBehalfOf": "mod"}),  # above the actor
    ("PUT", "/groups/g1/members/pat", {"scope": "moderator"}, {**FULL, "onBehalfOf": "own"}),
    ("PUT", "/groups/g1/members/pat", {"scope": "moderator"}, {**FULL, "onBehalfOf": "bad id!"}),
    ("PUT", "/groups/g1/members/pat", {"scope": "king"}, FULL),
    ("PUT", "/groups/nope/members/pat", {"scope": "participant"}, FULL),
    ("PUT", "/groups/g1/members/pat", {"scope": "participant"}, {**FULL, "Content-Type": "text/plain"}),
    ("GET", "/users/alice", None, FULL),
    ("GET", "/users/béatrice", None, FULL),
    ("GET", "/groups/g1/members", None, FULL),
]


def client(tmp_path: Path, name: str, through_flask_only: bool) -> tuple[Client, AuthorizeFastPath]:
    settings = Settings(data_dir=tmp_path / name, api_key=KEY, authorize_key=AUTH_KEY, policies=REPO / "policies",
                        model=REPO / "model.conf")
    app = create_app(settings)
    fast = app.wsgi_app
    assert isinstance(fast, AuthorizeFastPath)
    return Client(fast.flask_wsgi if through_flask_only else fast), fast


def send(c: Client, method: str, path: str, body: Any, headers: dict[str, str]) -> tuple[int, Any, str]:
    extra: dict[str, Any] = {} if body is None else {"json": body}
    if "Content-Type" in headers and body is not None:
        extra = {"data": str(body)}
    response = c.open(path, method=method, headers=headers, **extra)
    data = response.get_json(silent=True)
    if isinstance(data, dict) and isinstance(data.get("token"), str):
        data["token"] = data["token"].split(":")[1]  # the embedded store's epoch differs per folder
    return response.status_code, data, response.headers.get("Content-Type", "")


def test_the_fast_path_answers_as_flask_does(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fast, app = client(tmp_path, "fast", False)
    flask, _ = client(tmp_path, "flask", True)
    calls: list[int] = []
    flask_wsgi = app.flask_wsgi
    app.flask_wsgi = lambda environ, start: calls.append(1) or flask_wsgi(environ, start)  # type: ignore[func-returns-value]
    caplog.set_level(logging.INFO, logger="chatauthz.api")
    for method, path, body, headers in REQUESTS:
        caplog.clear()
        got = send(fast, method, path, body, headers)
        fast_log = [(r.getMessage(), r.__dict__.get("actor"), r.__dict__.get("route"), r.__dict__.get("status"))
                    for r in caplog.records]
        caplog.clear()
        want = send(flask, method, path, body, headers)
        flask_log = [(r.getMessage(), r.__dict__.get("actor"), r.__dict__.get("route"), r.__dict__.get("status"))
                     for r in caplog.records]
        assert got == want, f"{method} {path} {headers}"
        assert fast_log == flask_log, f"{method} {path} {headers}"
    fast_ones = sum(1 for method, path, *_ in REQUESTS
                    if method == "PUT" and (path.startswith("/users/") or "/members/" in path) and not path.endswith("/"))
    assert len(calls) == len(REQUESTS) - fast_ones, "a write went to Flask, or another request not"
