"""Bulk import: NDJSON records -> the ops the management API's plans would write. Pure.

One record a line:
    {"user": "u1", "role": "support"}                      the user's role (PUT /users/u1)
    {"group": "g1", "owner": "u1"}                         the group and its owner (PUT /groups/g1)
    {"member": "u2", "group": "g1", "scope": "moderator"}  a member's scope (PUT /groups/g1/members/u2)
    {"ban": "u3", "group": "g1"}                           a ban (POST /groups/g1/bannedusers/u3)
Each line is read like the API's body (ids canonicalised, unknown fields refused) and planned by
the same plan functions on the state as it stands after the lines before it, so a file may
create a group and then fill it. A line that would change nothing (the member already has that
scope, the user is already banned) plans no ops: importing a file twice changes nothing, unless
it adds a member it later bans (run again, the member line meets the ban: refused, as the API
refuses to add a banned user).

parse_record and plan_record are the reference, one line at a time through the API's own code.
The importer takes the fast path below, which gives the same ops and the same errors (held to it
by tests/test_import_differential.py): parse_block reads a block of lines at once into columns,
Planner checks each record against the rules of those plans on the state's tables directly (and
asks plan_record only to word a refusal), planned_runs turns its decisions back into the plans'
ops, as the runs of rows a store's write_runs takes.
"""
from __future__ import annotations

from collections.abc import Iterator
from itertools import compress
from operator import itemgetter
from typing import IO, TYPE_CHECKING, Any, NamedTuple

import orjson

from sidecar import groups, management, wire
from sidecar.errors import BadRequestError, ChatAuthzError
from sidecar.state import Op
from sidecar.stores.base import Row, Runs
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


# -- the fast path: blocks of lines, checked as the plans above would, on compact indexes ----
# A record as columns: kind (one of the codes below), x and y its two ids (canonical), and for a
# member its scope as given. What each kind's ids are:
MEMBER, USER, GROUP, BAN = 0, 1, 2, 3  # x, y: member uid, guid | uid, role | guid, owner | uid, guid
KIND_NAMES = ("member", "user", "group", "ban")
# What a record plans (pass 1 decides it, pass 2 writes it): nothing (a bad line, or already so),
# or these ops. The codes are bytes of the spool between the passes.
NOTHING, PUT_USER, PUT_GROUP, PUT_GROUP_ADMIN, PUT_MEMBER, PUT_BAN = range(6)
_KEYS = [(frozenset(KINDS[name]), code, name) for code, name in enumerate(KIND_NAMES)]
# a record's ids, x then y (Block's columns), by kind
KINDS_ORDER = {"member": ("member", "group"), "user": ("user", "role"), "group": ("group", "owner"),
               "ban": ("ban", "group")}
_ID_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"  # validation.ID_RE's


class Block(NamedTuple):
    """The records of a block of lines, as columns; `lines` their line numbers (None when every
    line of the block, from `first` on, is a record), `problems` the lines that are not records."""
    first: int
    kinds: list[int]
    xs: list[str]
    ys: list[str]
    scopes: list[Any]  # one per MEMBER record, in order
    lines: list[int] | None
    problems: list[tuple[int, str]]


def read_blocks(stream: IO[bytes], size: int = 1 << 18) -> Iterator[tuple[int, bytes]]:
    """(number of its first line, block) of whole lines (the last may lack its newline)."""
    rest, line_no = b"", 1
    while True:
        data = stream.read(size)
        if not data:
            if rest:
                yield line_no, rest
            return
        data = rest + data if rest else data
        cut = data.rfind(b"\n") + 1
        if cut == 0:  # one line longer than size: read on
            rest = data
            continue
        block, rest = data[:cut], data[cut:]
        yield line_no, block
        line_no += block.count(b"\n")


def parse_block(block: bytes, first: int) -> Block:
    """The block's records, read exactly as parse_record reads each line (a blank line is none).

    The common block, every line one flat object of a known kind with valid ids, is parsed as one
    JSON array (lines joined by commas). Its items are the block's lines one for one when every
    line starts with `{` and ends with `}` (`}\\n{` at each of the n-1 line breaks), the block
    holds n `{` in all, and the array is n flat objects of strings: each item then opens with one
    of the n `{` (none is left inside a string), the k-th at the start of line k, and ends at a
    `}` before line k+1 begins; what follows it up to the comma can only be whitespace, yet line
    k ends with `}`: so item k is line k. No backslash and two quotes per string parsed (as
    wire.loads checks) mean no key was repeated. Any other block is read line by line with
    parse_record."""
    body = block[:-1] if block.endswith(b"\n") else block
    n = body.count(b"\n") + 1
    if (body[:1] == b"{" and body[-1:] == b"}" and body.count(b"}\n{") == n - 1 and body.count(b"{") == n
            and b"\\" not in body):
        fast = _parse_flat(body, first, n)
        if fast is not None:
            return fast
    return _parse_lines(block, first)


def _parse_flat(body: bytes, first: int, n: int) -> Block | None:
    try:
        items = orjson.loads(b"[" + body.replace(b"\n", b",") + b"]")
    except orjson.JSONDecodeError:
        return None
    if len(items) != n:
        return None
    try:
        one_kind = _columns_of_one_kind(items)
    except TypeError:  # an item that is not an object
        return None
    if one_kind is not None:
        kinds, xs, ys, scopes = one_kind
    else:
        kinds, xs, ys, scopes = [], [], [], []
    member_keys, user_keys, group_keys, ban_keys = (keys for keys, _, _ in _KEYS)
    try:
        for item in items if one_kind is None else ():
            keys = item.keys()
            if keys == member_keys:
                kinds.append(MEMBER)
                xs.append(item["member"])
                ys.append(item["group"])
                scopes.append(item["scope"])
            elif keys == user_keys:
                kinds.append(USER)
                xs.append(item["user"])
                ys.append(item["role"])
            elif keys == group_keys:
                kinds.append(GROUP)
                xs.append(item["group"])
                ys.append(item["owner"])
            elif keys == ban_keys:
                kinds.append(BAN)
                xs.append(item["ban"])
                ys.append(item["group"])
            else:
                return None
        ids = "\n".join(xs) + "\n" + "\n".join(ys)  # TypeError unless all are strings
        "".join(scopes)
    except (AttributeError, TypeError):  # an item that is not an object, a value not a string
        return None
    # every id 1-100 of validation.ID_RE's characters (checked before lowercasing, as canonical_id)
    if not ids.isascii() or ids.encode("ascii").translate(None, _ID_CHARS) != b"\n" * (2 * n - 1) \
            or max(map(len, xs)) > 100 or max(map(len, ys)) > 100 or "\n\n" in ids \
            or ids[:1] == "\n" or ids[-1:] == "\n":
        return None
    if body.count(b'"') != 4 * (2 * n + len(scopes)):  # two per key and per value (all strings)
        return None
    canonical = ids.lower().split("\n")
    return Block(first, kinds, canonical[:n], canonical[n:], scopes, None, [])


def _columns_of_one_kind(items: list[Any]) -> tuple[list[int], list[Any], list[Any], list[Any]] | None:
    """(kinds, xs, ys, scopes) of the parsed items when every one is an object with the keys of
    the first's kind, taken a column at a time; else None (TypeError: an item is no object)."""
    first = items[0].keys() if items and type(items[0]) is dict else None
    for keys, code, name in _KEYS:
        if first == keys:
            if set(map(len, items)) != {len(keys)}:  # as many keys, so with all of them: the same
                return None
            fields = KINDS_ORDER[name]
            try:
                return ([code] * len(items), list(map(itemgetter(fields[0]), items)),
                        list(map(itemgetter(fields[1]), items)),
                        list(map(itemgetter("scope"), items)) if code == MEMBER else [])
            except KeyError:
                return None
    return None


def _parse_lines(block: bytes, first: int) -> Block:
    kinds: list[int] = []
    xs: list[str] = []
    ys: list[str] = []
    scopes: list[Any] = []
    lines: list[int] = []
    problems: list[tuple[int, str]] = []
    codes = {name: code for _, code, name in _KEYS}
    for line_no, line in enumerate(block.split(b"\n"), start=first):
        if not line.strip():
            continue
        try:
            record = parse_record(line)
        except ChatAuthzError as exc:
            problems.append((line_no, exc.message))
            continue
        kind = codes[record.kind]
        kinds.append(kind)
        lines.append(line_no)
        if kind == MEMBER or kind == BAN:
            assert record.group is not None
            xs.append(record.id)
            ys.append(record.group)
            if kind == MEMBER:
                scopes.append(record.value)
        else:
            xs.append(record.id)
            ys.append(record.value)
    return Block(first, kinds, xs, ys, scopes, lines, problems)


def record_of(kind: int, x: str, y: str, scope: Any) -> Record:
    if kind == MEMBER:
        return Record("member", x, y, scope)
    if kind == BAN:
        return Record("ban", x, y, None)
    return Record(KIND_NAMES[kind], x, None, y)


class Planner:
    """Decides each record on the state as plan_record would, without planning through the
    API: the rules of those plans checked directly on the state's own tables (which it keeps
    current, as applying the ops would). A refused record is handed to plan_record on the same
    state for the API's own error (and a plan that would not refuse it is a bug: it raises).
    tests/test_import_differential.py holds both ways to the same ops, errors and state."""

    def __init__(self, tx: WriteContext) -> None:
        state = tx.state
        if state._groups_by_user is not None:  # applied as RuntimeState does, without that index
            raise ValueError("the Planner keeps no groups_of index: give it a freshly loaded state")
        self.tx = tx
        self.state = state
        self.scopes = {name: name for name in tx.policy.scopes}  # one object per name (memory)
        self.policy_roles = tx.policy.roles
        self.names: dict[str, str] = {}  # role names and member uids, one object each (memory)

    def plan(self, block: Block) -> tuple[bytes, list[tuple[int, str]]]:
        """The code of each record of the block (what it plans) and its refused lines, each
        refusal decided on the state as it stands after the records before it."""
        st = self.state
        members, owners, bans, users, roles = st.members, st.owners, st.bans, st.users, st.roles
        known_scopes, policy_roles, names = self.scopes, self.policy_roles, self.names
        codes = bytearray(len(block.kinds))
        refused: list[tuple[int, str]] = []
        scopes = iter(block.scopes)
        for i, (kind, x, y) in enumerate(zip(block.kinds, block.xs, block.ys, strict=True)):
            if kind == MEMBER:  # plan_set_member
                given = next(scopes)
                scope = known_scopes.get(given) if type(given) is str else None
                group = members.get(y)
                current = None if group is None else group.get(x)
                if scope is None:
                    refused.append(self._refusal(block, i, given))
                elif current is None:  # _add_member_ops: the group exists, x is not banned
                    banned = bans.get(y)
                    if y not in owners or (banned is not None and x in banned):
                        refused.append(self._refusal(block, i, given))
                        continue
                    if group is None:
                        group = members[y] = {}
                    group[names.setdefault(x, x)] = scope
                    codes[i] = PUT_MEMBER
                elif current == scope:
                    pass  # ERR_SAME_SCOPE: already so
                elif scope != "admin" and owners.get(y) == x:
                    refused.append(self._refusal(block, i, given))
                else:
                    assert group is not None
                    group[x] = scope
                    codes[i] = PUT_MEMBER
            elif kind == USER:  # plan_set_user_role
                if y not in policy_roles and y not in roles:
                    refused.append(self._refusal(block, i, None))
                    continue
                current = users.get(x)
                if current != y and (current is not None or y != "default"):
                    users[x] = names.setdefault(y, y)
                    codes[i] = PUT_USER
            elif kind == GROUP:  # plan_set_group
                current = owners.get(x)
                if current == y:
                    continue  # the same owner: nothing to write
                banned = bans.get(x)
                if current is not None and banned is not None and y in banned:
                    refused.append(self._refusal(block, i, None))
                    continue
                y = names.setdefault(y, y)
                owners[x] = y
                group = members.get(x)
                if group is not None and group.get(y) == "admin":
                    codes[i] = PUT_GROUP
                else:
                    if group is None:
                        group = members[x] = {}
                    group[y] = "admin"
                    codes[i] = PUT_GROUP_ADMIN
            else:  # BAN: _ban_ops
                owner = owners.get(y)
                banned = bans.get(y)
                if owner is None:
                    refused.append(self._refusal(block, i, None))
                elif banned is not None and x in banned:
                    pass  # ERR_ALREADY_BANNED: already so
                elif owner == x:
                    refused.append(self._refusal(block, i, None))
                else:  # RuntimeState._ban: no longer a member, banned
                    group = members.get(y)
                    if group is not None:
                        group.pop(x, None)
                        if not group:
                            del members[y]
                    if banned is None:
                        banned = bans[y] = set()
                    banned.add(names.setdefault(x, x))
                    codes[i] = PUT_BAN
        return bytes(codes), refused

    def _refusal(self, block: Block, i: int, scope: Any) -> tuple[int, str]:
        """(line, the API's message) for the block's i-th record, which the plans refuse."""
        line_no = block.first + i if block.lines is None else block.lines[i]
        record = record_of(block.kinds[i], block.xs[i], block.ys[i], scope)
        try:
            ops = plan_record(self.tx, record)
        except ChatAuthzError as exc:
            return line_no, exc.message
        raise AssertionError(f"line {line_no}: the import refused {record} but the API plans it as {ops}")


# What each code plans, as ops: how many (bytes.translate table), and their op name (the first).
OPS_PER_CODE = bytes([0, 1, 1, 2, 1, 1]).ljust(256, b"\0")
_SINGLE_OP_KINDS = {MEMBER: "put_member", USER: "put_user", BAN: "ban"}  # a record of these: one op or none


def planned_runs(block: Block, codes: bytes) -> Runs:
    """The ops the block's records plan (codes from Planner.plan), in order, as plan_record
    gives them, as runs (what a store's write_runs takes: the op's fields in the registry's
    order). A block of one kind of one-op records is taken in one go."""
    kinds, n = block.kinds, len(block.kinds)
    if n and kinds[0] in _SINGLE_OP_KINDS and kinds.count(kinds[0]) == n:
        rows: list[Row]
        if kinds[0] == MEMBER:
            rows = list(compress(zip(block.ys, block.xs, block.scopes, strict=True), codes))
        elif kinds[0] == USER:
            rows = list(compress(zip(block.xs, block.ys, strict=True), codes))
        else:
            rows = list(compress(zip(block.ys, block.xs, strict=True), codes))
        return [(_SINGLE_OP_KINDS[kinds[0]], rows)] if rows else []
    runs: Runs = []

    def add(name: str, row: Row) -> None:
        if runs and runs[-1][0] == name:
            runs[-1][1].append(row)
        else:
            runs.append((name, [row]))
    scopes = iter(block.scopes)
    for kind, x, y, code in zip(kinds, block.xs, block.ys, codes, strict=True):
        scope = next(scopes) if kind == MEMBER else ""
        if code == PUT_MEMBER:
            add("put_member", (y, x, scope))
        elif code == PUT_USER:
            add("put_user", (x, y))
        elif code == PUT_BAN:
            add("ban", (y, x))
        elif code != NOTHING:
            add("put_group", (x, y))
            if code == PUT_GROUP_ADMIN:  # a new group's owner made admin: two ops of one record
                add("put_member", (x, y, "admin"))
    return runs
