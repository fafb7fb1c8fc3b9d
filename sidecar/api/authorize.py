"""The URL rules of POST /authorize, /authorize/batch (a denial is a 200 with allowed=false),
/authorize/capabilities, /authorize/groups and /authorize/members.

All are answered by api/fastpath.AuthorizeFastPath before a request reaches Flask; the rules
exist so that the URL map, the 405 envelope, the key scopes (api/auth.py) and the OpenAPI
document see them. Their views are never called.
"""
from __future__ import annotations

from typing import NoReturn

from flask import Blueprint

bp = Blueprint("authorize", __name__)


def _answered_by_the_fast_path() -> NoReturn:
    raise RuntimeError("POST /authorize and /authorize/batch are answered by api.fastpath.AuthorizeFastPath "
                       "in front of Flask; this view is only a URL rule")


@bp.post("/authorize")
def authorize() -> NoReturn:
    _answered_by_the_fast_path()


@bp.post("/authorize/batch")
def authorize_batch() -> NoReturn:
    _answered_by_the_fast_path()


@bp.post("/authorize/capabilities")
def capabilities() -> NoReturn:
    _answered_by_the_fast_path()


@bp.post("/authorize/groups")
def groups_where() -> NoReturn:
    _answered_by_the_fast_path()


@bp.post("/authorize/members")
def members_who() -> NoReturn:
    _answered_by_the_fast_path()
