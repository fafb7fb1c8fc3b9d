"""The URL rules of POST /authorize, /authorize/batch (a denial is a 200 with allowed=false),
/authorize/capabilities, /authorize/groups and /authorize/members.

All are answered by api/fastpath.AuthorizeFastPath before a request reaches Flask; the rules
exist so that the URL map, the 405 envelope, the key scopes (api/auth.py) and the OpenAPI
document see them. Their one view is never called.
"""
from __future__ import annotations

from typing import NoReturn

from flask import Blueprint

bp = Blueprint("authorize", __name__)
# endpoint -> path: the fast path's routes, which an authorize-only key may call
RULES = {"authorize": "/authorize", "authorize_batch": "/authorize/batch", "capabilities": "/authorize/capabilities",
         "groups_where": "/authorize/groups", "members_who": "/authorize/members"}
ENDPOINTS = frozenset(f"{bp.name}.{endpoint}" for endpoint in RULES)


def _answered_by_the_fast_path() -> NoReturn:
    raise RuntimeError("the /authorize routes are answered by api.fastpath.AuthorizeFastPath in front of "
                       "Flask; this view is only a URL rule")


for _endpoint, _path in RULES.items():
    bp.add_url_rule(_path, _endpoint, _answered_by_the_fast_path, methods=["POST"])
