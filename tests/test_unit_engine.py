"""Pure unit tests of the decision engine (sidecar.engine) over the shipped policy files.

No server, no store: an Engine over load_policy(<repo>/policies) and a RuntimeState built by
applying ops in memory. Each test builds its own Engine (see test_gate_cache_survives_freed_state
for why a shared Engine would be unsafe).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sidecar.engine import AuthzRequest, Decision, Engine
from sidecar.errors import BadRequestError
from sidecar.policy import load_policy
from sidecar.rules import build_rules
from sidecar.state import Op, RuntimeState

REPO = Path(__file__).resolve().parents[1]
POLICY = load_policy(REPO / "policies")

PERMISSION_DENIED = "ERR_PERMISSION_DENIED"
NO_CLEARANCE = "ERR_GROUP_NO_CLEARANCE"
NO_SCOPE_CLEARANCE = "ERR_GROUP_NO_SCOPE_CLEARANCE"


class World:
    """One engine and one runtime state, changed by ops."""

    def __init__(self, *ops: Op) -> None:
        self.engine = Engine(POLICY)
        self.state = RuntimeState()
        self.apply(*ops)

    def apply(self, *ops: Op) -> World:
        for op in ops:
            self.state.apply(op)
        return self

    def decide(self, uid: str, action: str, guid: str | None = None, target: str | None = None,
               **context: Any) -> Decision:
        return self.engine.decide(AuthzRequest(uid, action, guid, target, context), self.state)


def group(guid: str, owner: str, **members: str) -> list[Op]:
    """Ops for a group with its owner (an admin member, as the API does) and other members."""
    ops: list[Op] = [{"op": "put_group", "guid": guid, "owner": owner},
                     {"op": "put_member", "guid": guid, "uid": owner, "scope": "admin"}]
    ops += [{"op": "put_member", "guid": guid, "uid": uid, "scope": scope} for uid, scope in members.items()]
    return ops


def user(uid: str, role: str) -> Op:
    return {"op": "put_user", "uid": uid, "role": role}


def role_perms(role: str, **values: Any) -> Op:
    return {"op": "set_role_permissions", "role": role, "values": values}


def put_role(role: str, name: str | None = None) -> Op:
    return {"op": "put_role", "role": role,
            "record": {"role": role, "name": name or role.title(), "createdAt": 1}}


def standard_world(*extra: Op) -> World:
    """g1: owner `own`, admins `a`/`a2`, moderators `m`/`m2`, participants `p`/`p2`.
    g2: owner `own2`, admin `a`, moderator `m`, participant `p`."""
    return World(*group("g1", "own", a="admin", a2="admin", m="moderator", m2="moderator",
                        p="participant", p2="participant"),
                 *group("g2", "own2", a="admin", m="moderator", p="participant"), *extra)


def assert_refused(decision: Decision, code: str, layer: str, *fragments: str) -> None:
    assert decision.allowed is False, decision
    assert decision.code == code, decision
    assert decision.layer == layer, decision
    assert decision.reason.strip(), decision
    for fragment in fragments:
        assert fragment in decision.reason, (fragment, decision.reason)


def assert_allowed(decision: Decision) -> None:
    assert decision.allowed is True, decision
    assert decision.code is None, decision
    assert decision.reason.startswith("allowed: "), decision


# -- role layer --------------------------------------------------------------------------------
def test_unassigned_user_has_the_default_role() -> None:
    world = World()
    decision = world.decide("nobody-assigned", "createGroup")
    assert_allowed(decision)
    assert decision.role == "default"
    assert decision.layer == "role"
    assert "from catalogue" in decision.reason


def test_default_role_values_apply_to_unassigned_users() -> None:
    world = World(role_perms("default", createGroup="deny"), user("agent", "support"))
    assert_refused(world.decide("stranger", "createGroup"), PERMISSION_DENIED, "role",
                   "'default'", "createGroup = deny", "runtime")
    # an assigned user of another role is not affected by the default role's values
    assert_refused(world.decide("agent", "createGroup"), PERMISSION_DENIED, "role", "'support'", "roles.yaml")
    world.apply(role_perms("support", createGroup="allow"))
    assert_allowed(world.decide("agent", "createGroup"))


def test_file_role_value_is_denied_with_its_source() -> None:
    world = World(user("agent", "support"))
    decision = world.decide("agent", "blockUser", target="x")
    assert_refused(decision, PERMISSION_DENIED, "role", "'support'", "blockUser = deny", "roles.yaml")
    assert decision.role == "support"


def test_role_layer_deny_wins_over_admin_scope_and_over_owner() -> None:
    world = standard_world(user("own", "restricted"), user("a", "restricted"))
    # restricted denies initiateCall in roles.yaml; the scope layer would allow it for everybody
    for uid in ("own", "a"):
        decision = world.decide(uid, "initiateCall", "g1")
        assert_refused(decision, PERMISSION_DENIED, "role", "'restricted'", "initiateCall = deny")
        assert decision.role == "restricted"
    # a runtime role deny of a scope-layer action wins too
    world.apply(role_perms("restricted", sendMessage="deny"))
    assert_refused(world.decide("own", "sendMessage", "g1", messageType="text"), PERMISSION_DENIED, "role",
                   "sendMessage = deny", "runtime")
    assert_refused(world.decide("a", "sendMessage", "g1", messageType="text"), PERMISSION_DENIED, "role")
    # and the same members without the role restriction are allowed
    assert_allowed(world.decide("a2", "initiateCall", "g1"))
    assert_allowed(world.decide("own2", "initiateCall", "g2"))


def test_restricted_feature_from_the_policy_file() -> None:
    world = World(user("r", "restricted"))
    decision = world.decide("r", "joinGroup")
    assert_refused(decision, PERMISSION_DENIED, "role", "u.joinGroup", "joinGroup", "roles.yaml")
    assert decision.role == "restricted"


def test_runtime_restricted_features_replace_the_files_list() -> None:
    world = World(user("r", "restricted"), user("d", "default"),
                  {"op": "set_restricted_features", "role": "restricted", "features": ["createMessage"]})
    # joinGroup was restricted by the file only: the runtime list replaces it
    assert_allowed(world.decide("r", "joinGroup"))
    decision = world.decide("r", "sendMessage", messageType="text")
    assert_refused(decision, PERMISSION_DENIED, "role", "u.createMessage", "sendMessage", "runtime")
    # another role is untouched
    assert_allowed(world.decide("d", "sendMessage", messageType="text"))
    # an empty runtime list lifts every restriction of the role
    world.apply({"op": "set_restricted_features", "role": "restricted", "features": []})
    assert_allowed(world.decide("r", "joinGroup"))
    assert_allowed(world.decide("r", "sendMessage", messageType="text"))


def test_one_feature_gates_each_of_its_actions_including_group_actions() -> None:
    world = standard_world(put_role("mods"), user("a", "mods"),
                           {"op": "set_restricted_features", "role": "mods",
                            "features": ["updateMessage", "kickMember"]})
    for action in ("editMessage", "editThreadedMessage"):
        assert_refused(world.decide("a", action), PERMISSION_DENIED, "role", "u.updateMessage", action)
    # kickMember gates a scope-layer action: the role layer refuses even an admin of the group
    assert_refused(world.decide("a", "kickMembers", "g1", "p"), PERMISSION_DENIED, "role", "u.kickMember")
    assert_allowed(world.decide("a2", "kickMembers", "g1", "p"))


# -- constraint keys ---------------------------------------------------------------------------
def test_restricted_role_message_types() -> None:
    world = World(user("r", "restricted"))
    assert_allowed(world.decide("r", "sendMessage", target="bob", messageType="text"))
    refused = world.decide("r", "sendMessage", target="bob", messageType="image")
    assert_refused(refused, PERMISSION_DENIED, "role", "sendMessage.allowedMessageTypes = [text]",
                   "roles.yaml", "context.messageType is 'image'")
    missing = world.decide("r", "sendMessage", target="bob")
    assert_refused(missing, PERMISSION_DENIED, "role", "sendMessage.allowedMessageTypes",
                   "send context.messageType")
    # the threaded key is set too
    assert_refused(world.decide("r", "sendThreadedMessage", messageType="video"), PERMISSION_DENIED, "role",
                   "sendThreadedMessage.allowedMessageTypes")


def test_allowed_mime_types_apply_only_to_media_types() -> None:
    world = World(put_role("pngonly"), user("u", "pngonly"),
                  role_perms("pngonly", **{"sendMessage.allowedMimeTypes": ["image/png"]}))
    assert_allowed(world.decide("u", "sendMessage", messageType="text"))
    assert_allowed(world.decide("u", "sendMessage", messageType="text", mimeType="text/html"))
    assert_allowed(world.decide("u", "sendMessage", messageType="image", mimeType="image/png"))
    assert_refused(world.decide("u", "sendMessage", messageType="image", mimeType="image/gif"),
                   PERMISSION_DENIED, "role", "sendMessage.allowedMimeTypes", "context.mimeType is 'image/gif'")
    assert_refused(world.decide("u", "sendMessage", messageType="file", mimeType="application/pdf"),
                   PERMISSION_DENIED, "role", "sendMessage.allowedMimeTypes")
    assert_refused(world.decide("u", "sendMessage", messageType="audio"),
                   PERMISSION_DENIED, "role", "send context.mimeType")


def test_mode_friends_needs_is_friend_true() -> None:
    world = World(role_perms("default", **{"sendMessage.mode": "friends"}))
    assert_allowed(world.decide("u", "sendMessage", target="v", isFriend=True))
    assert_refused(world.decide("u", "sendMessage", target="v", isFriend=False),
                   PERMISSION_DENIED, "role", "sendMessage.mode = 'friends'", "context.isFriend is False")
    assert_refused(world.decide("u", "sendMessage", target="v"),
                   PERMISSION_DENIED, "role", "send context.isFriend")
    # a truthy non-boolean is not "true"
    assert_refused(world.decide("u", "sendMessage", target="v", isFriend="yes"), PERMISSION_DENIED, "role")
    world.apply(role_perms("default", **{"sendMessage.mode": "all"}))
    assert_allowed(world.decide("u", "sendMessage", target="v"))


def test_allowed_receiver_roles_checks_the_targets_role() -> None:
    world = World(put_role("customer"), user("c", "customer"), user("agent", "support"),
                  user("other", "customer"),
                  role_perms("customer", **{"sendMessage.allowedReceiverRoles": ["support"]}))
    assert_allowed(world.decide("c", "sendMessage", target="agent", messageType="text"))
    decision = world.decide("c", "sendMessage", target="other", messageType="text")
    assert_refused(decision, PERMISSION_DENIED, "role", "sendMessage.allowedReceiverRoles = [support]",
                   "target.role is 'customer'")
    # an unassigned target holds the default role
    assert_refused(world.decide("c", "sendMessage", target="unassigned", messageType="text"),
                   PERMISSION_DENIED, "role", "target.role is 'default'")


def test_receiver_type_is_derived_from_guid_or_target() -> None:
    world = standard_world(role_perms("default", **{"sendMessage.allowedReceiverTypes": ["user"]}))
    assert_allowed(world.decide("p", "sendMessage", target="p2", messageType="text"))
    assert_refused(world.decide("p", "sendMessage", "g1", messageType="text"), PERMISSION_DENIED, "role",
                   "context.receiverType is 'group'")


# -- membership --------------------------------------------------------------------------------
def test_banned_user_is_refused_with_its_own_code() -> None:
    world = standard_world({"op": "ban", "guid": "g1", "uid": "p"})
    decision = world.decide("p", "sendMessage", "g1", messageType="text")
    assert_refused(decision, "ERR_BANNED_GROUPMEMBER", "membership", "'p'", "banned", "'g1'")
    # the ban is per group
    assert_allowed(world.decide("p", "sendMessage", "g2", messageType="text"))
    # unbanning does not make them a member again
    world.apply({"op": "unban", "guid": "g1", "uid": "p"})
    assert_refused(world.decide("p", "sendMessage", "g1", messageType="text"), "ERR_GROUP_NOT_JOINED",
                   "membership")
    world.apply({"op": "put_member", "guid": "g1", "uid": "p", "scope": "participant"})
    assert_allowed(world.decide("p", "sendMessage", "g1", messageType="text"))


def test_non_member_is_refused_with_its_own_code() -> None:
    world = standard_world()
    decision = world.decide("stranger", "sendMessage", "g1", messageType="text")
    assert_refused(decision, "ERR_GROUP_NOT_JOINED", "membership", "'stranger'", "not a member", "'g1'")
    assert decision.role == "default"
    # outside a group the same user is fine
    assert_allowed(world.decide("stranger", "sendMessage", target="p", messageType="text"))
    # a deleted group has no members left
    world.apply({"op": "delete_group", "guid": "g1"})
    assert_refused(world.decide("a", "sendMessage", "g1", messageType="text"), "ERR_GUID_NOT_FOUND",
                   "membership")


def test_role_layer_is_checked_before_membership() -> None:
    world = standard_world(user("r", "restricted"), {"op": "ban", "guid": "g1", "uid": "r"})
    assert_refused(world.decide("r", "initiateCall", "g1"), PERMISSION_DENIED, "role")
    assert_refused(world.decide("r", "listMembers", "g1"), "ERR_BANNED_GROUPMEMBER", "membership")


# -- scope layer -------------------------------------------------------------------------------
@pytest.mark.parametrize(("scope_uid", "allowed", "refused"), [
    ("a", ["changeScope", "addMembers", "kickMembers", "ban", "unban", "listBannedUsers", "editGroup",
           "deleteGroup", "sendMessage", "initiateCall", "joinCall"], []),
    ("m", ["changeScope", "kickMembers", "ban", "unban", "listBannedUsers", "editGroup", "sendMessage",
           "initiateCall", "joinCall"], ["addMembers", "deleteGroup"]),
    ("p", ["sendMessage", "initiateCall", "joinCall", "listMembers", "leaveGroup"],
     ["changeScope", "addMembers", "kickMembers", "ban", "unban", "listBannedUsers", "editGroup",
      "deleteGroup"]),
])
def test_default_scope_privileges_follow_the_seed_table(scope_uid: str, allowed: list[str],
                                                        refused: list[str]) -> None:
    """Product §1 default privileges, seen through the scope gate (clearance aside)."""
    world = standard_world()
    context = {"messageType": "text", "newScope": "participant"}
    for action in allowed + refused:
        target = "nobody-yet" if action == "addMembers" else "p2" if POLICY.actions[action].target_required else None
        decision = world.decide(scope_uid, action, "g1", target, **context)
        if action in allowed:
            assert not (decision.layer == "scope" and not decision.allowed), (action, decision)
        else:
            assert_refused(decision, PERMISSION_DENIED, "scope", f"may not {action}", "scopes.yaml")


def test_per_group_override_lets_participants_act_in_that_group_only() -> None:
    world = standard_world({"op": "set_scope_permissions", "guid": "g1", "scope": "participant",
                            "values": {"editGroup": "allow"}})
    decision = world.decide("p", "editGroup", "g1")
    assert_allowed(decision)
    assert "group 'g1'" in decision.reason
    assert decision.scope == "participant"
    assert_refused(world.decide("p", "editGroup", "g2"), PERMISSION_DENIED, "scope", "scopes.yaml")
    # the override is for participants: the same key for moderators in g1 is unchanged (allow)
    assert_allowed(world.decide("m", "editGroup", "g1"))


def test_per_group_override_lets_participants_add_members_in_that_group_only() -> None:
    world = standard_world({"op": "set_scope_permissions", "guid": "g1", "scope": "participant",
                            "values": {"addMembers": "allow"}})
    decision = world.decide("p", "addMembers", "g1", "newbie")
    assert_allowed(decision)
    assert "group 'g1'" in decision.reason
    # g2 keeps the default (participants may not add members)
    assert_refused(world.decide("p", "addMembers", "g2", "newbie"), PERMISSION_DENIED, "scope",
                   "may not addMembers", "scopes.yaml")
    # the override does not let a participant grant a scope above its own
    assert_refused(world.decide("p", "addMembers", "g1", "newbie", newScope="moderator"), NO_CLEARANCE,
                   "clearance")
    # moderators of g1 are not affected by the participants' override
    assert_refused(world.decide("m", "addMembers", "g1", "newbie"), PERMISSION_DENIED, "scope")
    # removing the override restores the default
    world.apply({"op": "unset_scope_permission", "guid": "g1", "scope": "participant", "key": "addMembers"})
    assert_refused(world.decide("p", "addMembers", "g1", "newbie"), PERMISSION_DENIED, "scope", "scopes.yaml")


def test_per_group_override_of_a_constraint_key() -> None:
    world = standard_world({"op": "set_scope_permissions", "guid": "g1", "scope": "participant",
                            "values": {"sendMessage.allowedMessageTypes": ["text"]}})
    assert_allowed(world.decide("p", "sendMessage", "g1", messageType="text"))
    refused = world.decide("p", "sendMessage", "g1", messageType="image")
    assert refused.allowed is False and refused.layer == "scope", refused
    assert "sendMessage.allowedMessageTypes = [text]" in refused.reason
    assert "group override" in refused.reason
    assert_allowed(world.decide("p", "sendMessage", "g2", messageType="image"))
    assert_allowed(world.decide("m", "sendMessage", "g1", messageType="image"))


def test_scope_constraint_refusal_is_permission_denied_not_clearance() -> None:
    """A scope-layer constraint on a request fact (not on the target) is a scope denial:
    ERR_PERMISSION_DENIED (spec §4.1), not ERR_GROUP_NO_CLEARANCE (no clearance over a target)."""
    world = standard_world({"op": "set_scope_permissions", "guid": "g1", "scope": "participant",
                            "values": {"sendMessage.allowedMessageTypes": ["text"],
                                       "listMessages.allowedMessageCategories": ["message"]}})
    assert_refused(world.decide("p", "sendMessage", "g1", messageType="image"), PERMISSION_DENIED, "scope")
    assert_refused(world.decide("p", "listMessages", "g1", messageCategory="custom"), PERMISSION_DENIED, "scope")


# -- clearance ---------------------------------------------------------------------------------
def test_moderator_has_no_clearance_over_admin() -> None:
    world = standard_world()
    assert_refused(world.decide("m", "kickMembers", "g1", "a"), NO_CLEARANCE, "clearance",
                   "kickMembers.allowedScopes", "target.scope is 'admin'")
    assert_refused(world.decide("m", "ban", "g1", "a"), NO_CLEARANCE, "clearance")
    assert_allowed(world.decide("m", "kickMembers", "g1", "p"))
    assert_allowed(world.decide("m", "ban", "g1", "p"))


def test_equal_rank_has_no_clearance() -> None:
    world = standard_world()
    assert_refused(world.decide("a", "kickMembers", "g1", "a2"), NO_CLEARANCE, "clearance",
                   "only a higher scope may act")
    assert_allowed(world.decide("a", "kickMembers", "g1", "m"))


def test_change_scope_clearance() -> None:
    world = standard_world()
    assert_refused(world.decide("m", "changeScope", "g1", "a", newScope="participant"), NO_SCOPE_CLEARANCE,
                   "clearance")
    assert_refused(world.decide("a", "changeScope", "g1", "a2", newScope="participant"), NO_SCOPE_CLEARANCE,
                   "clearance")
    assert_allowed(world.decide("a", "changeScope", "g1", "m", newScope="participant"))
    assert_allowed(world.decide("a", "changeScope", "g1", "p", newScope="admin"))
    assert_allowed(world.decide("m", "changeScope", "g1", "p", newScope="moderator"))
    # only the owner acts on admins
    assert_allowed(world.decide("own", "changeScope", "g1", "a", newScope="participant"))


def test_new_scope_may_not_rank_above_the_actor() -> None:
    world = standard_world()
    assert_refused(world.decide("m", "changeScope", "g1", "p", newScope="admin"), NO_SCOPE_CLEARANCE,
                   "clearance", "'admin'", "may not rank above")


def test_same_scope_is_refused() -> None:
    world = standard_world()
    assert_refused(world.decide("a", "changeScope", "g1", "p", newScope="participant"), "ERR_SAME_SCOPE",
                   "clearance", "already participant")


def test_self_action_is_refused() -> None:
    world = standard_world()
    assert_refused(world.decide("a", "changeScope", "g1", "a", newScope="participant"),
                   "ERR_GROUP_NO_SELF_ACTION", "clearance")
    assert_refused(world.decide("m", "kickMembers", "g1", "m"), "ERR_GROUP_NO_SELF_ACTION", "clearance")


def test_owner_may_not_change_their_own_scope() -> None:
    """Product §1: "Acting on oneself with changeScope is refused." (no exception for the owner)"""
    world = standard_world()
    decision = world.decide("own", "changeScope", "g1", "own", newScope="participant")
    assert_refused(decision, "ERR_GROUP_NO_SELF_ACTION", "clearance")


def test_target_must_be_a_member() -> None:
    world = standard_world()
    assert_refused(world.decide("a", "kickMembers", "g1", "stranger"), "ERR_NOT_A_MEMBER", "clearance",
                   "'stranger'")
    assert_refused(world.decide("a", "changeScope", "g1", "stranger", newScope="moderator"),
                   "ERR_NOT_A_MEMBER", "clearance")
    # a non-member may be banned (as the lowest scope) and, once banned, unbanned
    assert_allowed(world.decide("m", "ban", "g1", "stranger"))
    assert_refused(world.decide("m", "unban", "g1", "stranger"), "ERR_NOT_A_BANNED_USER", "clearance")
    world.apply({"op": "ban", "guid": "g1", "uid": "stranger"})
    assert_allowed(world.decide("m", "unban", "g1", "stranger"))
    assert_refused(world.decide("m", "ban", "g1", "stranger"), "ERR_ALREADY_BANNED", "clearance")


def test_nobody_may_kick_or_ban_the_owner() -> None:
    world = standard_world()
    for action in ("kickMembers", "ban"):
        assert_refused(world.decide("a", action, "g1", "own"), NO_CLEARANCE, "clearance",
                       "owns group", "nobody may")
    assert_refused(world.decide("a", "changeScope", "g1", "own", newScope="participant"), NO_SCOPE_CLEARANCE,
                   "clearance", "owns group")
    # ... while the owner may act on any admin
    assert_allowed(world.decide("own", "kickMembers", "g1", "a"))
    assert_allowed(world.decide("own", "ban", "g1", "a"))


def test_adding_a_member_may_not_grant_a_scope_above_the_actor() -> None:
    world = standard_world({"op": "set_scope_permissions", "guid": "g1", "scope": "moderator",
                            "values": {"addMembers": "allow"}})
    assert_allowed(world.decide("a", "addMembers", "g1", "newbie"))
    assert_allowed(world.decide("a", "addMembers", "g1", "newbie", newScope="moderator"))
    assert_allowed(world.decide("a", "addMembers", "g1", "newbie", newScope="admin"))
    assert_allowed(world.decide("m", "addMembers", "g1", "newbie", newScope="moderator"))
    assert_refused(world.decide("m", "addMembers", "g1", "newbie", newScope="admin"), NO_CLEARANCE,
                   "clearance", "may not rank above")
    assert_allowed(world.decide("own", "addMembers", "g1", "newbie", newScope="admin"))
    # addMembers.allowedScopes restricts the scopes one may add as
    world.apply({"op": "set_scope_permissions", "guid": "g1", "scope": "admin",
                 "values": {"addMembers.allowedScopes": ["participant"]}})
    assert_allowed(world.decide("a", "addMembers", "g1", "newbie"))
    assert_refused(world.decide("a", "addMembers", "g1", "newbie", newScope="moderator"), NO_CLEARANCE,
                   "clearance", "addMembers.allowedScopes = [participant]", "group override")


# -- caller errors -----------------------------------------------------------------------------
def test_unknown_action_is_a_bad_request() -> None:
    world = World()
    with pytest.raises(BadRequestError) as info:
        world.decide("u", "teleport")
    assert info.value.status == 400
    assert "action" in (info.value.details or {})


@pytest.mark.parametrize(("action", "guid", "target", "context", "field"), [
    ("kickMembers", None, "p", {}, "guid"),
    ("editGroup", None, None, {}, "guid"),
    ("kickMembers", "g1", None, {}, "target"),
    ("addMembers", "g1", None, {}, "target"),
    ("changeScope", "g1", "p", {}, "context.newScope"),
    ("changeScope", "g1", "p", {"newScope": "owner"}, "context.newScope"),
])
def test_missing_inputs_are_bad_requests(action: str, guid: str | None, target: str | None,
                                         context: dict[str, Any], field: str) -> None:
    world = standard_world()
    with pytest.raises(BadRequestError) as info:
        world.decide("a", action, guid, target, **context)
    assert field in (info.value.details or {}), info.value.details


def test_every_refusal_has_a_reason_and_a_code() -> None:
    world = standard_world(user("r", "restricted"), user("s", "support"), {"op": "ban", "guid": "g1",
                                                                          "uid": "banned"},
                           role_perms("default", **{"listUsers.mode": "friends"}))
    refusals = 0
    for action in POLICY.actions:
        for uid in ("own", "a", "m", "p", "r", "s", "banned", "stranger"):
            for guid in (None, "g1"):
                for target in (None, "p", "a", "own", uid):
                    try:
                        decision = world.decide(uid, action, guid, target, newScope="moderator")
                    except BadRequestError:
                        continue
                    d = decision.to_dict()
                    assert set(d) >= {"allowed", "reason", "layer", "role", "revision", "policyHash"}
                    assert decision.reason.strip()
                    if not decision.allowed:
                        refusals += 1
                        assert decision.code and decision.code.startswith("ERR_"), decision
                        assert d["code"] == decision.code
                        assert decision.layer in ("role", "membership", "scope", "clearance"), decision
    assert refusals > 100


# -- decision metadata and the Casbin gate cache -----------------------------------------------
def test_decisions_carry_revision_and_policy_hash() -> None:
    world = World()
    world.state.apply_all([role_perms("default", createGroup="deny")], 7)
    refused = world.decide("u", "createGroup")
    allowed = world.decide("u", "sendMessage", messageType="text")
    for decision in (refused, allowed):
        assert decision.revision == 7
        assert decision.policy_hash == POLICY.content_hash
        assert len(POLICY.content_hash) == 16
        body = decision.to_dict()
        assert body["revision"] == 7 and body["policyHash"] == POLICY.content_hash
    world.state.apply_all([user("u", "support")], 8)
    assert world.decide("u", "createGroup").revision == 8


def test_gate_cache_is_invalidated_by_policy_ops() -> None:
    world = standard_world(user("s", "support"))
    assert_refused(world.decide("s", "createGroup"), PERMISSION_DENIED, "role", "roles.yaml")
    world.apply(role_perms("support", createGroup="allow"))
    assert "from runtime" in world.decide("s", "createGroup").reason
    assert_allowed(world.decide("s", "createGroup"))
    world.apply(role_perms("support", createGroup="deny"))
    assert_refused(world.decide("s", "createGroup"), PERMISSION_DENIED, "role", "runtime")
    world.apply(role_perms("support", createGroup="allow"))
    assert_allowed(world.decide("s", "createGroup"))
    world.apply({"op": "unset_role_permission", "role": "support", "key": "createGroup"})
    assert_refused(world.decide("s", "createGroup"), PERMISSION_DENIED, "role", "roles.yaml")

    # scope overrides, then deleting the group drops them
    assert_refused(world.decide("p", "editGroup", "g1"), PERMISSION_DENIED, "scope")
    world.apply({"op": "set_scope_permissions", "guid": "g1", "scope": "participant",
                 "values": {"editGroup": "allow"}})
    assert_allowed(world.decide("p", "editGroup", "g1"))
    world.apply({"op": "delete_group", "guid": "g1"}, *group("g1", "own", p="participant"))
    assert_refused(world.decide("p", "editGroup", "g1"), PERMISSION_DENIED, "scope", "scopes.yaml")

    # a deleted runtime role's rules are gone and its users fall back to default
    world.apply(put_role("temp"), user("t", "temp"), role_perms("temp", createGroup="deny"))
    assert_refused(world.decide("t", "createGroup"), PERMISSION_DENIED, "role")
    world.apply({"op": "delete_role", "role": "temp"})
    decision = world.decide("t", "createGroup")
    assert_allowed(decision)
    assert decision.role == "default"
    world.apply(put_role("temp"), user("t", "temp"))
    assert_allowed(world.decide("t", "createGroup"))


def test_user_holding_a_role_that_does_not_exist_is_denied() -> None:
    world = World(user("ghost", "no-such-role"))
    decision = world.decide("ghost", "sendMessage", messageType="text")
    assert_refused(decision, PERMISSION_DENIED, "role", "'no-such-role'", "no longer exists")


def test_gate_cache_survives_freed_state() -> None:
    """Engine.decide(request, state) takes any RuntimeState. A state freed and replaced by a new
    one (same policy_generation, possibly the same id()) must still be decided on its own content."""
    engine = Engine(POLICY)
    request = AuthzRequest("u", "createGroup")
    for _ in range(20):
        old = RuntimeState()
        old.apply(role_perms("default", createGroup="deny"))
        assert engine.decide(request, old).allowed is False
        del old
        new = RuntimeState()
        new.apply(role_perms("default", createGroup="allow"))
        assert engine.decide(request, new).allowed is True, "stale Casbin gate from a freed state"


# -- scale: users and groups never enter the decision path -------------------------------------
def _requests() -> list[AuthzRequest]:
    return [
        AuthzRequest("own", "kickMembers", "g1", "a"),
        AuthzRequest("a", "kickMembers", "g1", "p"),
        AuthzRequest("m", "kickMembers", "g1", "a"),
        AuthzRequest("m", "changeScope", "g1", "p", {"newScope": "admin"}),
        AuthzRequest("p", "editGroup", "g1"),
        AuthzRequest("p", "editGroup", "g2"),
        AuthzRequest("p", "sendMessage", "g1", None, {"messageType": "text"}),
        AuthzRequest("r", "sendMessage", None, "p", {"messageType": "image"}),
        AuthzRequest("r", "joinGroup"),
        AuthzRequest("s", "createGroup"),
        AuthzRequest("x", "sendMessage", "g1", None, {"messageType": "text"}),
        AuthzRequest("banned", "listMembers", "g1"),
        AuthzRequest("u99999", "createGroup"),
        AuthzRequest("u5", "sendMessage", "grp9999", None, {"messageType": "text"}),
    ]


def _core_ops() -> list[Op]:
    return [*group("g1", "own", a="admin", m="moderator", p="participant"),
            *group("g2", "own2", p="participant"),
            user("r", "restricted"), user("s", "support"), user("u99999", "support"), user("u5", "default"),
            {"op": "ban", "guid": "g1", "uid": "banned"},
            {"op": "set_scope_permissions", "guid": "g1", "scope": "participant", "values": {"editGroup": "allow"}},
            *group("grp9999", "u1", u5="participant")]


def test_big_state_decides_like_a_tiny_one() -> None:
    tiny = World(*_core_ops())
    big = World()
    roles = ("default", "support", "restricted")
    for i in range(100_000):
        big.state.apply(user(f"u{i}", roles[i % 3]))
    for g in range(10_000):
        big.apply({"op": "put_group", "guid": f"grp{g}", "owner": f"u{g}"},
                  {"op": "put_member", "guid": f"grp{g}", "uid": f"u{g}", "scope": "admin"},
                  {"op": "put_member", "guid": f"grp{g}", "uid": f"u{g + 10_000}", "scope": "participant"})
    big.apply(*_core_ops())
    assert len(big.state.users) == 100_000 + 2  # r and s added, u5 and u99999 re-assigned
    assert len(big.state.members) == 10_002

    # users and memberships never become Casbin lines
    assert len(build_rules(POLICY, big.state)) == len(build_rules(POLICY, tiny.state))
    for request in _requests():
        small, large = tiny.engine.decide(request, tiny.state), big.engine.decide(request, big.state)
        assert (small.allowed, small.code, small.layer, small.role, small.scope, small.reason) == \
               (large.allowed, large.code, large.layer, large.role, large.scope, large.reason), request
    # and the gate cache holds role/scope x action answers only, never one per user or group
    assert len(big.engine._answers) <= len(_requests()) * 2
