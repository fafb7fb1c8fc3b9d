"""The framework guards in real apps calling a real sidecar: a Flask decorator and a FastAPI
dependency (403 with code and reason, 503 when the sidecar does not answer, the view runs only
when allowed), and the pytest fixture that starts a sidecar from a world file."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import pytest
from fastapi import Depends, FastAPI
from flask import Flask, g, jsonify

from sidecar.client import AsyncClient, Client, Decision
from sidecar.client.fastapi import FastAPIAuthz
from sidecar.client.flask import FlaskAuthz
from tests.client_support import silent_server
from tests.conftest import TEST_API_KEY, Server, unique

pytestmark = pytest.mark.integration

with warnings.catch_warnings():  # starlette 1.x would have httpx2 for its TestClient; httpx still works
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

REPO = Path(__file__).resolve().parents[1]


def group(server: Server) -> tuple[str, str, str]:
    guid, owner, member = unique("g"), unique("own"), unique("m")
    with Client(server.url, api_key=TEST_API_KEY, timeout=5.0) as client:
        client.create_group(guid, owner)
        client.add_members(guid, participants=[member])
    return guid, owner, member


def flask_app(client: Client) -> Flask:
    app = Flask("chat")
    authz = FlaskAuthz(client)

    @app.post("/groups/<guid>/messages")
    @authz.require("sendMessage", uid=lambda req: req.headers["X-User"], guid=lambda req: req.view_args["guid"],
                   context=lambda req: {"messageType": req.get_json()["type"]})
    def send(guid: str) -> Any:
        return jsonify({"sent": True, "by": g.authz_decision.scope})

    @app.delete("/groups/<guid>/members/<uid>")
    @authz.require("kickMembers", uid=lambda req: req.headers["X-User"], guid=lambda req: req.view_args["guid"],
                   target=lambda req: req.view_args["uid"])
    def kick(guid: str, uid: str) -> Any:
        authz.current.kick(guid, uid)  # this request's session: its checks read this write
        left = authz.current.check(uid, "sendMessage", guid, context={"messageType": "text"})
        return jsonify({"kicked": uid, "then": left.code})
    return app


def test_flask_guard(shared_server: Server) -> None:
    guid, owner, member = group(shared_server)
    with Client(shared_server.url, api_key=TEST_API_KEY, timeout=5.0) as client:
        web = flask_app(client).test_client()
        ok = web.post(f"/groups/{guid}/messages", json={"type": "text"}, headers={"X-User": member})
        assert ok.status_code == 200 and ok.json == {"sent": True, "by": "participant"}
        outsider = web.post(f"/groups/{guid}/messages", json={"type": "text"}, headers={"X-User": "zed"})
        assert outsider.status_code == 403
        assert outsider.json["error"]["code"] == "ERR_GROUP_NOT_JOINED" and "zed" in outsider.json["error"]["reason"]
        refused = web.delete(f"/groups/{guid}/members/{owner}", headers={"X-User": member})
        assert refused.status_code == 403 and refused.json["error"]["code"] == "ERR_PERMISSION_DENIED"
        kicked = web.delete(f"/groups/{guid}/members/{member}", headers={"X-User": owner})
        assert kicked.status_code == 200 and kicked.json == {"kicked": member, "then": "ERR_GROUP_NOT_JOINED"}
    with silent_server() as url:
        with Client(url, timeout=0.2) as down:
            answer = flask_app(down).test_client().post(f"/groups/{guid}/messages", json={"type": "text"},
                                                        headers={"X-User": member})
            assert answer.status_code == 503 and answer.json["error"]["code"] == "ERR_SIDECAR_UNAVAILABLE"
        with Client(url, timeout=0.2, fail_closed=True) as closed:
            answer = flask_app(closed).test_client().post(f"/groups/{guid}/messages", json={"type": "text"},
                                                          headers={"X-User": member})
            assert answer.status_code == 403 and answer.json["error"]["code"] == "ERR_SIDECAR_UNAVAILABLE"


def fastapi_app(client: Any) -> FastAPI:
    app = FastAPI()
    authz = FastAPIAuthz(client)
    may_send = authz.require("sendMessage", uid=lambda r: r.headers["x-user"], guid=lambda r: r.path_params["guid"],
                             context={"messageType": "text"})

    @app.post("/groups/{guid}/messages")
    async def send(guid: str, decision: Decision = Depends(may_send)) -> dict[str, Any]:  # noqa: B008
        return {"sent": True, "by": decision.scope}
    return app


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_fastapi_guard(kind: str, shared_server: Server) -> None:
    guid, _, member = group(shared_server)
    make = AsyncClient if kind == "async" else Client
    with TestClient(fastapi_app(make(shared_server.url, api_key=TEST_API_KEY, timeout=5.0))) as web:
        ok = web.post(f"/groups/{guid}/messages", headers={"x-user": member})
        assert ok.status_code == 200 and ok.json() == {"sent": True, "by": "participant"}
        refused = web.post(f"/groups/{guid}/messages", headers={"x-user": "zed"})
        assert refused.status_code == 403 and refused.json()["detail"]["code"] == "ERR_GROUP_NOT_JOINED"
        assert "zed" in refused.json()["detail"]["reason"]
    with silent_server() as url:
        with TestClient(fastapi_app(make(url, timeout=0.2))) as web:
            down = web.post(f"/groups/{guid}/messages", headers={"x-user": member})
            assert down.status_code == 503 and down.json()["detail"]["code"] == "ERR_SIDECAR_UNAVAILABLE"
        with TestClient(fastapi_app(make(url, timeout=0.2, fail_closed=True))) as web:
            closed = web.post(f"/groups/{guid}/messages", headers={"x-user": member})
            assert closed.status_code == 403 and closed.json()["detail"]["code"] == "ERR_SIDECAR_UNAVAILABLE"


def test_the_pytest_fixture_starts_a_sidecar_from_a_world(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\nchatauthz_world = default_world.yaml\n")
    (tmp_path / "default_world.yaml").write_text("users: {alice: support}\n")
    (tmp_path / "worlds").mkdir()
    (tmp_path / "worlds" / "chat.yaml").write_text(textwrap.dedent("""\
        world:
          users: {mark: support}
          groups:
            support-team: {owner: olivia, members: {mia: moderator, pete: participant}}
        """))
    (tmp_path / "test_app.py").write_text(textwrap.dedent("""\
        import pytest

        @pytest.mark.chatauthz_world("worlds/chat.yaml")
        def test_marked_world(chatauthz_sidecar):
            assert chatauthz_sidecar.check("mia", "kickMembers", "support-team", "pete").allowed
            assert chatauthz_sidecar.check("mia", "kickMembers", "support-team", "olivia").code == "ERR_GROUP_NO_CLEARANCE"
            assert chatauthz_sidecar.check("mark", "createGroup").code == "ERR_PERMISSION_DENIED"
            chatauthz_sidecar.set_role("mark", "default")
            assert chatauthz_sidecar.check("mark", "createGroup").allowed

        def test_ini_world(chatauthz_sidecar):
            assert chatauthz_sidecar.check("alice", "createGroup").code == "ERR_PERMISSION_DENIED"
            assert chatauthz_sidecar.check("mark", "createGroup").allowed  # a fresh sidecar per test
        """))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "sidecar.client.pytest_plugin", "-p",
                             "no:cacheprovider", "test_app.py"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
