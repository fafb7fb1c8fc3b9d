"""The client never turns an answer that is not a decision into one (found by an outside attack):
a 200 whose body is not a decision, or a batch answer with another number of results than checks
sent, is no answer: SidecarUnavailable, or with fail_closed a denial (ERR_SIDECAR_UNAVAILABLE).
Before, check() raised KeyError/TypeError past fail_closed and check_many() returned [] for one
check (all(...) of it is True). The server here is a stand-in that answers what the test tells
it to, on a real loopback socket: the client is the thing under test.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from sidecar.client import Client, SidecarUnavailable
from sidecar.core import Sidecar
from sidecar.errors import BadRequestError

pytestmark = pytest.mark.integration
ANSWERS: dict[str, bytes] = {}


class Answer(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = ANSWERS[self.path]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def stand_in() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


NOT_DECISIONS = [b'{"data":{"allowed":true}}', b'{"data":{"allowed":"false","reason":"r","layer":"role"}}',
                 b'{"allowed":true}', b'[{"data":{"allowed":true}}]',
                 b'{"data":{"allowed":1,"reason":"r","layer":"role","role":"default","revision":1,'
                 b'"token":"e:1","decisionId":"d"}}', b'{"data":null}']


@pytest.mark.parametrize("body", NOT_DECISIONS)
def test_a_200_that_is_not_a_decision_is_no_answer(stand_in: str, body: bytes) -> None:
    ANSWERS["/authorize"] = body
    decision = Client(stand_in, api_key="k", fail_closed=True).check("u", "sendMessage")
    assert (decision.allowed, decision.code) == (False, "ERR_SIDECAR_UNAVAILABLE"), decision
    with pytest.raises(SidecarUnavailable):
        Client(stand_in, api_key="k").check("u", "sendMessage")


@pytest.mark.parametrize("results", [b"[]", b'[{"allowed":true,"reason":"r","layer":"role","role":"d",'
                                            b'"revision":1,"token":"e:1","decisionId":"x"}]', b'"x"'])
def test_a_batch_answer_must_answer_every_check(stand_in: str, results: bytes) -> None:
    ANSWERS["/authorize/batch"] = b'{"data":{"results":' + results + b"}}"
    checks = [{"uid": "u", "action": "sendMessage"}, {"uid": "v", "action": "sendMessage"}]
    answered = Client(stand_in, api_key="k", fail_closed=True).check_many(checks)
    assert [(d.allowed, d.code) for d in answered] == [(False, "ERR_SIDECAR_UNAVAILABLE")] * 2  # type: ignore[union-attr]
    with pytest.raises(SidecarUnavailable):
        Client(stand_in, api_key="k").check_many(checks)


def test_capabilities_refuse_a_fact_no_request_may_carry(tmp_path: Any) -> None:
    """As /authorize does: context.newScope "owner" is a 400, not 200 with target scopes."""
    from sidecar.stores.sqlite import SQLiteStore
    from tests.test_capabilities_and_lists import POLICY
    core = Sidecar(POLICY, SQLiteStore(tmp_path / "c.db"))
    with pytest.raises(BadRequestError, match="context.newScope"):
        core.capabilities("u", None, None, {"newScope": "owner"})
