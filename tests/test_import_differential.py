"""The import's fast path against the reference, one line at a time through the API's plans.

`chatauthz import` reads blocks of lines at once (sidecar.importing.parse_block), decides every
record on the state's tables (Planner) and rebuilds the ops from its decisions (ops_of). The
reference is what the API does for the same writes: parse_record and plan_record per line,
each plan's ops applied before the next line. For random streams of records (good, bad,
duplicate, conflicting, malformed, lines split or joined to fool the block parser), read in
blocks of random sizes, both must give every line the same ops or the same error message, and
leave the same state.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.core import WriteContext
from sidecar.engine import Engine
from sidecar.errors import ChatAuthzError
from sidecar.importing import OPS_PER_CODE, Planner, parse_block, parse_record, plan_record, planned_runs, read_blocks
from sidecar.policy.loader import load_policy
from sidecar.state import Op, RuntimeState
from sidecar.stores.base import ops_of_runs

ROOT = Path(__file__).resolve().parent.parent
POLICY = load_policy(ROOT / "policies", ROOT / "model.conf")
Outcome = tuple[str, Any]  # ("ops", [op, ...]) or ("error", message)


def start_state() -> RuntimeState:
    """A store that already holds some of what the files name (and a custom role)."""
    state = RuntimeState()
    state.roles["custom1"] = {"name": "Custom"}
    state.users.update({"u1": "support", "u2": "restricted"})
    state.owners["g1"] = "u1"
    state.members["g1"] = {"u1": "admin", "u3": "participant"}
    state.bans["g1"] = {"u4"}
    state.members["gorphan"] = {"u2": "moderator"}  # members of a group with no owner: the plans still decide
    state.owners["g3"] = "u5"  # an owner who is no member (a store written before owners were): a ban
    state.members["g3"] = {"u2": "participant"}  # of u2 leaves g3 with no members at all
    return state


def reference(data: bytes) -> tuple[dict[int, Outcome], RuntimeState]:
    state = start_state()
    tx = WriteContext(Engine(POLICY), state)
    outcomes: dict[int, Outcome] = {}
    for line_no, line in enumerate(io.BytesIO(data), start=1):
        if not line.strip():
            continue
        try:
            ops = plan_record(tx, parse_record(line))
        except ChatAuthzError as exc:
            outcomes[line_no] = ("error", exc.message)
            continue
        for op in ops:
            state.apply(op)
        if ops:
            outcomes[line_no] = ("ops", ops)
    return outcomes, state


def fast(data: bytes, block_size: int) -> tuple[dict[int, Outcome], RuntimeState]:
    state = start_state()
    planner = Planner(WriteContext(Engine(POLICY), state))
    outcomes: dict[int, Outcome] = {}
    for first, raw in read_blocks(io.BytesIO(data), block_size):
        block = parse_block(raw, first)
        codes, refused = planner.plan(block)
        for line_no, message in [*block.problems, *refused]:
            assert line_no not in outcomes
            outcomes[line_no] = ("error", message)
        lines = block.lines if block.lines is not None else range(first, first + len(block.kinds))
        planned = iter(ops_of_runs(planned_runs(block, codes)))  # what write_runs would write
        for line_no, code in zip(lines, codes, strict=True):
            if code:
                ops: list[Op] = [next(planned) for _ in range(OPS_PER_CODE[code])]
                assert line_no not in outcomes
                outcomes[line_no] = ("ops", ops)
        assert next(planned, None) is None
    return outcomes, state


def tables(state: RuntimeState) -> dict[str, Any]:
    return {"users": state.users, "owners": state.owners, "members": state.members, "bans": state.bans}


def assert_same(data: bytes, block_size: int) -> None:
    expected, expected_state = reference(data)
    got, got_state = fast(data, block_size)
    assert got == expected
    assert tables(got_state) == tables(expected_state)


# mostly a few valid ids (so that records meet: the same user, group, ban again), sometimes odd ones
USERS = ["u1", "U1", "u2", "u3", "u4", "u5"]
GROUPS = ["g1", "G1", "g2", "g3", "gorphan"]
ODD_IDS = ["a" * 100, "b" * 101, "x y", "", "\u212a", "u1\n", 7, None]
ROLES = ["support", "Support", "restricted", "default", "custom1", "nosuchrole", "", 3]
SCOPES = ["admin", "moderator", "participant", "owner", "Admin", "", 3, None, ["admin"]]
uids = st.one_of(st.sampled_from(USERS), st.sampled_from(USERS), st.sampled_from(USERS), st.sampled_from(ODD_IDS))
guids = st.one_of(st.sampled_from(GROUPS), st.sampled_from(GROUPS), st.sampled_from(GROUPS), st.sampled_from(ODD_IDS))
ids = st.one_of(uids, guids)
scopes = st.one_of(st.sampled_from(SCOPES[:3]), st.sampled_from(SCOPES))
records = st.one_of(
    st.fixed_dictionaries({"member": uids, "group": guids, "scope": scopes}),
    st.fixed_dictionaries({"user": uids, "role": st.sampled_from(ROLES)}),
    st.fixed_dictionaries({"group": guids, "owner": uids}),
    st.fixed_dictionaries({"ban": uids, "group": guids}),
    st.fixed_dictionaries({"user": ids, "role": st.sampled_from(ROLES), "extra": st.just(1)}),
    st.fixed_dictionaries({"member": ids, "group": ids}),  # no scope
    st.fixed_dictionaries({"ban": ids}),
    st.fixed_dictionaries({"uid": ids}),
)
# lines no dict dumps to: broken JSON, other values, duplicate keys, escapes, objects split over
# two lines or two objects on one, braces inside strings, blank and padded lines
ODD_LINES = [
    "{not json", "[1]", "1", '"u1"', "null", "{}", "", "   ", "\r", '{"user": "u5", "user": "u6", "role": "support"}',
    '{"user": "u\\u0035", "role": "support"}', '{"user": "u5"', '"role": "support"}',
    '{"user": "u5", "role": "support"}, {"user": "u6", "role": "support"}', '{"user": "u5", "role": "sup}port"}',
    '{"user": "u5", "role": "{support"}', '  {"user": "u5", "role": "support"}', '{"user": "u5", "role": "support"}\r',
    '{"member": "u5", "group": "g1", "scope": {"a": "b"}}', '{"group": "g9", "owner": "u5", "group": "g1"}',
    '{"user": "u5", "role": "support"}{"user": "u6", "role": "support"}', '{"ban": "u5", "group": "g1"} ',
    '\ufeff{"user": "u5", "role": "support"}', '{"member": "u5", "group": "g1", "scope": "participant", "x": {}}',
]
lines = st.one_of(records.map(json.dumps), records.map(lambda r: json.dumps(r, separators=(",", ":"))),
                  records.map(lambda r: json.dumps(r, ensure_ascii=False)), st.sampled_from(ODD_LINES))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(lines, max_size=60), st.integers(min_value=1, max_value=600), st.booleans())
def test_the_fast_path_plans_every_line_as_the_api_does(stream: list[str], block_size: int, newline: bool) -> None:
    data = ("\n".join(stream) + ("\n" if newline else "")).encode("utf-8", "surrogatepass")
    assert_same(data, block_size)


@settings(max_examples=200, deadline=None)
@given(st.lists(records.map(json.dumps), min_size=1, max_size=80), st.integers(min_value=200, max_value=8000))
def test_well_formed_streams_agree_in_big_blocks(stream: list[str], block_size: int) -> None:
    """Mostly whole blocks of flat objects: the array parse, not the line-by-line one."""
    assert_same(("\n".join(stream) + "\n").encode(), block_size)


def test_a_block_of_flat_objects_takes_the_array_parse() -> None:
    """The differential tests above only mean something if the fast parse is taken at all."""
    data = b'{"user": "Ann", "role": "support"}\n{"group": "g1", "owner": "ann"}\n' \
           b'{"member": "bob", "group": "g1", "scope": "moderator"}\n{"ban": "cid", "group": "g1"}\n'
    block = parse_block(data, 1)
    assert block.lines is None and block.problems == []
    assert block.kinds == [1, 2, 0, 3] and block.xs == ["ann", "g1", "bob", "cid"]
    assert block.ys == ["support", "ann", "g1", "g1"] and block.scopes == ["moderator"]


def test_objects_split_across_lines_are_not_joined() -> None:
    """Two halves of an object on two lines, and two objects on one, make as many array items
    as lines: still every one of those lines is refused on its own."""
    data = b'{"user": "u5"\n"role": "support"}\n{"user": "u6", "role": "support"}, {"user": "u7", "role": "support"}\n'
    block = parse_block(data, 1)
    assert block.kinds == [] and [line for line, _ in block.problems] == [1, 2, 3]
    assert_same(data, 1 << 16)


# One kind a stretch (as exported files are): whole blocks of one kind take planned_runs's
# one-kind path (compress over the decisions), the rest its record-by-record one.
records_of_kind = [
    st.fixed_dictionaries({"member": uids, "group": guids, "scope": scopes}),
    st.fixed_dictionaries({"user": uids, "role": st.sampled_from(ROLES)}),
    st.fixed_dictionaries({"group": guids, "owner": uids}),
    st.fixed_dictionaries({"ban": uids, "group": guids}),
]
near_kind = [  # as many keys as the kind has, one of them not its own
    st.fixed_dictionaries({"member": uids, "group": guids, "role": scopes}),
    st.fixed_dictionaries({"user": uids, "group": guids}),
    st.fixed_dictionaries({"group": guids, "uid": uids}),
    st.fixed_dictionaries({"ban": uids, "owner": uids}),
]
one_kind_streams = st.lists(st.sampled_from([0, 1, 2, 3]), min_size=1, max_size=4).flatmap(
    lambda kinds: st.tuples(*(st.one_of(st.lists(records_of_kind[k].map(json.dumps), min_size=1, max_size=60),
                                        st.lists(st.one_of(records_of_kind[k], near_kind[k]).map(json.dumps), min_size=1,
                                                 max_size=60)) for k in kinds)))


@settings(max_examples=200, deadline=None)
@given(one_kind_streams, st.integers(min_value=100, max_value=8000))
def test_streams_of_one_kind_a_stretch_agree(stretches: tuple[list[str], ...], block_size: int) -> None:
    assert_same(("\n".join(line for stretch in stretches for line in stretch) + "\n").encode(), block_size)


def test_a_block_of_one_kind_takes_the_one_kind_path() -> None:
    """The test above only means something if planned_runs's one-kind path is taken: a block of
    members gives one run straight from the columns, in the registry's field order."""
    data = b'{"group": "g1", "owner": "ann"}\n'
    state = start_state()
    planner = Planner(WriteContext(Engine(POLICY), state))
    planner.plan(parse_block(data, 1))
    block = parse_block(b'{"member": "Bob", "group": "g1", "scope": "moderator"}\n'
                        b'{"member": "u1", "group": "g1", "scope": "admin"}\n'  # already so
                        b'{"member": "cid", "group": "g1", "scope": "participant"}\n', 1)
    codes, refused = planner.plan(block)
    assert refused == [] and planned_runs(block, codes) == [
        ("put_member", [("g1", "bob", "moderator"), ("g1", "cid", "participant")])]
