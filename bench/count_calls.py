#!/usr/bin/env python3
"""How long the request walk is: the Python calls of one POST /authorize (kickMembers,
moderator -> participant) and one onBehalfOf write (PUT /groups/g/members/p, changeScope by an
admin), counted with sys.setprofile, as design-review.md section 2 counted them.

    .venv/bin/python bench/count_calls.py
    PYTHONPATH=/tmp/old-checkout .venv/bin/python bench/count_calls.py   # another revision

The app is built with create_app on a temp data folder (the embedded store) and driven with
Flask's test client, which goes through Flask.__call__ -> app.wsgi_app (the /authorize fast
path first). Each request is made three times and the third counted (caches warm). Prints the
calls in all, those in sidecar.*, the sidecar modules touched and the module changes in call
order.
"""
from __future__ import annotations

import itertools
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

KEY = "count-calls-key-0123456789abcdef"


def count(send: Callable[[], Any]) -> tuple[int, int, int, int, int]:
    """(status, calls, calls in sidecar.*, sidecar modules, module changes) of the third send()."""
    for _ in range(2):
        send()
    calls: list[str] = []

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            calls.append(frame.f_globals.get("__name__", "?"))
    sys.setprofile(profile)
    try:
        response = send()
    finally:
        sys.setprofile(None)
    ours = [name for name in calls if name.startswith("sidecar")]
    changes = sum(1 for before, after in zip(ours, ours[1:], strict=False) if before != after)
    return response.status_code, len(calls), len(ours), len(set(ours)), changes


def main() -> None:
    import sidecar
    from sidecar.api import create_app
    from sidecar.config import Settings
    print(f"sidecar package: {Path(sidecar.__file__).parent}")
    with tempfile.TemporaryDirectory() as data:
        settings = Settings(data_dir=Path(data), api_key=KEY, policies=ROOT / "policies", model=ROOT / "model.conf")
        app = create_app(settings)
        client = app.test_client()
        headers = {"apikey": KEY}
        for path, body in [("/groups/g", {"owner": "own"}), ("/groups/g/members/mod", {"scope": "moderator"}),
                           ("/groups/g/members/adm", {"scope": "admin"}),
                           ("/groups/g/members/p", {"scope": "participant"})]:
            assert client.put(path, json=body, headers=headers).status_code == 200
        check = {"uid": "mod", "action": "kickMembers", "guid": "g", "target": "p"}
        scopes = itertools.cycle(["moderator", "participant"])  # each PUT changes the scope: a real write
        rows = [("POST /authorize (kickMembers)", count(lambda: client.post("/authorize", json=check, headers=headers))),
                ("PUT member, onBehalfOf (changeScope)", count(lambda: client.put(
                    "/groups/g/members/p", json={"scope": next(scopes)}, headers={**headers, "onBehalfOf": "adm"})))]
        print(f"{'request':40} {'status':>6} {'calls':>7} {'sidecar':>8} {'modules':>8} {'changes':>8}")
        for name, (status, calls, ours, modules, changes) in rows:
            print(f"{name:40} {status:>6} {calls:>7} {ours:>8} {modules:>8} {changes:>8}")
        app.extensions["chatauthz"].store.close()


if __name__ == "__main__":
    main()
