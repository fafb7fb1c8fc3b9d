"""Bulk import: NDJSON records -> the ops the management API's plans would write. Pure.

One record a line:
    {"user": "u1", "role": "support"}                      the user's role (PUT /users/u1)
    {"group": "g1", "owner": "u1"}                         the group and its owner (PUT /groups/g1)
    {"member": "u2", "group": "g1", "scope": "moderator"}  a member's scope (PUT /groups/g1/members/u2)
    {"ban": "u3", "group": "g1"}                           a ban (POST /groups/g1/bannedusers/u3)
Each line is read like the API's body (ids canonicalised, unknown fields refused) and planned by
the same plan functions on the state as it stands after the lines before it, so a file may
create a group and then fill it. A line that would change nothing (the member already has that
scope, the user is already banned) plans no ops: importing a file twice changes nothing.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

from sidecar import groups, management, wire
from sidecar.errors import BadRequestError, ChatAuthzError
from sidecar.state import Op
from sidecar.validation import canonical_id, clean_id, reject_unknown, require_object

if TYPE_CHECKING:
    from sidecar.core import WriteContext

# the record's kind is its first key of these (a member or ban line names its group too)
KINDS = {"member": {"member", "group", "scope"}, "ban": {"ban", "group"}, "user": {"user", "role"},
         "group": {"group", "owner"}}
UNCHANGED = {"ERR_SAME_SCOPE", "ERR_ALREADY_BANNED"}  # already so: nothing to write


class Record(NamedTuple):
    kind: str   # user | group | member | ban
    id: str     # the user, group, member or banned user
    group: str | None
    value: Any  # the role, owner or scope


def parse_record(line: bytes | str) -> Record:
    """One NDJSON line as a record; a BadRequestError says what is wrong with it."""
    body = wire.loads(line)
    if type(body) is dict:  # the common, well-formed line: the same checks, fewer calls
        fast = _well_formed(body)
        if fast is not None:
            return fast
    return _parse(require_object(body, "line"))


def _well_formed(body: dict[str, Any]) -> Record | None:
    """The record when every field is present and valid (the checks _parse makes), else None
    (then _parse finds and names the problem)."""
    keys = body.keys()
    if keys == KINDS["member"]:
        uid, guid, scope = canonical_id(body["member"]), canonical_id(body["group"]), body["scope"]
        return Record("member", uid, guid, scope) if uid and guid else None
    if keys == KINDS["user"]:
        uid, role = canonical_id(body["user"]), canonical_id(body["role"])
        return Record("user", uid, None, role) if uid and role else None
    if keys == KINDS["group"]:
        guid, owner = canonical_id(body["group"]), canonical_id(body["owner"])
        return Record("group", guid, None, owner) if guid and owner else None
    if keys == KINDS["ban"]:
        uid, guid = canonical_id(body["ban"]), canonical_id(body["group"])
        return Record("ban", uid, guid, None) if uid and guid else None
    return None


def _parse(body: dict[str, Any]) -> Record:
    kind = next((name for name in KINDS if name in body), None)
    if kind is None:
        raise BadRequestError.field("line", "A record names one of user, group, member or ban.")
    reject_unknown(body, KINDS[kind])
    record_id = clean_id(body.get(kind), kind)
    if kind == "user":
        return Record(kind, record_id, None, management.parse_user_role({"role": body.get("role")}))
    if kind == "group":
        return Record(kind, record_id, None, groups.parse_group({"owner": body.get("owner")}))
    guid = clean_id(body.get("group"), "group")
    if kind == "member":
        return Record(kind, record_id, guid, groups.parse_member({"scope": body.get("scope")}))
    return Record(kind, record_id, guid, None)


def plan_record(tx: WriteContext, record: Record) -> list[Op]:
    """The ops of one record on tx's state, planned as its API write is (no onBehalfOf)."""
    try:
        if record.kind == "user":
            ops, _ = management.plan_set_user_role(tx, record.id, record.value)
        elif record.kind == "group":
            ops, _ = groups.plan_set_group(tx, record.id, record.value, None)
        elif record.kind == "member":
            assert record.group is not None
            ops, _ = groups.plan_set_member(tx, record.group, record.id, record.value, None)
        else:
            assert record.group is not None
            ops, _ = groups.plan_ban(tx, record.group, record.id, None)
    except ChatAuthzError as exc:
        if exc.code in UNCHANGED:
            return []
        raise
    return ops
