"""Policy files: broken texts are refused with every problem as 'file:line: message'; the shipped
files load and hold every CometChat key (spec §3.2 RBAC, §4.2 SBAC, plus changeScope). Pure."""
from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.errors import PolicyError
from sidecar.policy import PolicySet, load_policy, load_policy_texts

REPO = Path(__file__).resolve().parents[1]
FILES = ("catalogue.yaml", "roles.yaml", "scopes.yaml")
TEXTS = {name: (REPO / "policies" / name).read_text(encoding="utf-8") for name in FILES}
MODEL = (REPO / "model.conf").read_text(encoding="utf-8")


def edited(*edits: tuple[str, str, str]) -> dict[str, str]:
    """The shipped texts with (file, old, new) replacements (each old must occur)."""
    texts = dict(TEXTS)
    for name, old, new in edits:
        assert old in texts[name], f"{name} no longer contains {old!r}"
        texts[name] = texts[name].replace(old, new, 1)
    return texts


def line_of(text: str, fragment: str) -> int:
    """1-based line of the first line containing fragment."""
    for number, line in enumerate(text.splitlines(), start=1):
        if fragment in line:
            return number
    raise AssertionError(f"{fragment!r} not found")


def problems_of(texts: dict[str, str], model: str = MODEL) -> list[str]:
    with pytest.raises(PolicyError) as info:
        load_policy_texts(texts, model)
    return info.value.problems


# -- one problem at a time ---------------------------------------------------------------------
def test_unknown_permission_key_in_a_role() -> None:
    texts = edited(("roles.yaml", "      createGroup: deny\n      blockUser", "      createGroupz: deny\n      blockUser"))
    line = line_of(texts["roles.yaml"], "createGroupz")
    assert problems_of(texts) == [f"roles.yaml:{line}: role support: unknown permission key 'createGroupz'"]


def test_unknown_permission_key_in_a_scope() -> None:
    texts = edited(("scopes.yaml", "      editGroup: allow\n      addMembers: deny",
                    "      editGroup: allow\n      kickEveryone: allow\n      addMembers: deny"))
    line = line_of(texts["scopes.yaml"], "kickEveryone")
    assert problems_of(texts) == [f"scopes.yaml:{line}: scope moderator: unknown permission key 'kickEveryone'"]


def test_bad_value_for_an_allow_deny_key() -> None:
    texts = edited(("roles.yaml", "      createGroup: deny\n      blockUser", "      createGroup: maybe\n      blockUser"))
    line = line_of(texts["roles.yaml"], "createGroup: maybe")
    assert problems_of(texts) == [
        f"roles.yaml:{line}: role support: createGroup must be one of allow, deny; got 'maybe'"]


def test_value_outside_a_string_array_vocabulary() -> None:
    texts = edited(("roles.yaml", "      sendMessage.allowedMessageTypes: [text]",
                    "      sendMessage.allowedMessageTypes: [text, gif]"))
    line = line_of(texts["roles.yaml"], "[text, gif]")
    assert problems_of(texts) == [
        f"roles.yaml:{line}: role restricted: sendMessage.allowedMessageTypes does not allow 'gif'; "
        "allowed: text, image, audio, video, file"]


def test_value_outside_a_scope_vocabulary() -> None:
    texts = edited(("scopes.yaml", "      kickMembers.allowedScopes: [participant]",
                    "      kickMembers.allowedScopes: [owner]"))
    line = line_of(texts["scopes.yaml"], "[owner]")
    assert problems_of(texts) == [
        f"scopes.yaml:{line}: scope moderator: kickMembers.allowedScopes does not allow 'owner'; "
        "allowed: admin, moderator, participant"]


def test_unknown_role_in_a_roles_string_array() -> None:
    texts = edited(("roles.yaml", "      blockUser: deny", "      blockUser: deny\n      blockUser.allowedRoles: [ghost]"))
    line = line_of(texts["roles.yaml"], "[ghost]")
    assert problems_of(texts) == [
        f"roles.yaml:{line}: role support: blockUser.allowedRoles names role 'ghost', which does not exist"]


def test_unknown_scope_name() -> None:
    texts = edited(("scopes.yaml", "  participant:", "  guest:\n    rank: 5\n  participant:"))
    line = line_of(texts["scopes.yaml"], "guest:")
    assert problems_of(texts) == [
        f"scopes.yaml:{line}: unknown scope 'guest'; scopes are admin, moderator, participant"]


def test_renamed_scope_is_unknown_and_the_original_missing() -> None:
    texts = edited(("scopes.yaml", "  participant:", "  guest:"))
    scopes_start = line_of(texts["scopes.yaml"], "  admin:")
    assert problems_of(texts) == [
        f"scopes.yaml:{scopes_start}: scope participant is missing",
        f"scopes.yaml:{line_of(texts['scopes.yaml'], 'guest:')}: unknown scope 'guest'; "
        "scopes are admin, moderator, participant"]


def test_missing_scope() -> None:
    text = TEXTS["scopes.yaml"]
    start, end = text.index("  moderator:\n"), text.index("  participant:\n")
    texts = dict(TEXTS, **{"scopes.yaml": text[:start] + text[end:]})
    scopes_start = line_of(texts["scopes.yaml"], "  admin:")
    assert problems_of(texts) == [f"scopes.yaml:{scopes_start}: scope moderator is missing"]


def test_invalid_yaml_reports_its_line() -> None:
    texts = edited(("roles.yaml", "      blockUser: deny", "      blockUser: deny: now"))
    line = line_of(texts["roles.yaml"], "deny: now")
    assert problems_of(texts) == [f"roles.yaml:{line}: invalid YAML: mapping values are not allowed here"]


def test_invalid_yaml_in_another_file_reports_its_own_name_and_line() -> None:
    texts = edited(("scopes.yaml", "    rank: 2", "    rank: 2\n    rank: 3: 4"))
    line = line_of(texts["scopes.yaml"], "rank: 3: 4")
    assert problems_of(texts) == [f"scopes.yaml:{line}: invalid YAML: mapping values are not allowed here"]


def test_yaml_alias_is_refused() -> None:
    texts = edited(("roles.yaml", "roles:\n", "roles:\n  base: &base {name: Base}\n  copy: *base\n"))
    line = line_of(texts["roles.yaml"], "copy: *base")
    assert problems_of(texts) == [
        f"roles.yaml:{line}: invalid YAML: aliases (*name) are not allowed in policy files"]


def test_duplicate_key_is_refused() -> None:
    texts = edited(("roles.yaml", "      blockUser: deny", "      blockUser: deny\n      blockUser: allow"))
    line = line_of(texts["roles.yaml"], "blockUser: allow")
    assert problems_of(texts) == [f"roles.yaml:{line}: invalid YAML: duplicate key 'blockUser'"]


def test_duplicate_role_is_refused() -> None:
    texts = edited(("roles.yaml", "  restricted:\n", "  support:\n    name: Again\n  restricted:\n"))
    line = line_of(texts["roles.yaml"], "name: Again") - 1
    assert problems_of(texts) == [f"roles.yaml:{line}: invalid YAML: duplicate key 'support'"]


@pytest.mark.parametrize("bad_id", ["Support!", "has space", "x" * 101, "UPPER"])
def test_bad_role_id(bad_id: str) -> None:
    texts = edited(("roles.yaml", "  support:", f"  '{bad_id}':"))
    line = line_of(texts["roles.yaml"], bad_id)
    assert problems_of(texts) == [
        f"roles.yaml:{line}: role id {bad_id!r} must be 1-100 characters of a-z, 0-9, - and _"]


def test_unknown_restricted_feature() -> None:
    texts = edited(("roles.yaml", "restrictedFeatures: [u.joinGroup]", "restrictedFeatures: [u.joinGroup, u.teleport]"))
    line = line_of(texts["roles.yaml"], "u.teleport")
    assert problems_of(texts) == [f"roles.yaml:{line}: role restricted: unknown feature 'u.teleport'"]


def test_default_role_may_not_restrict_features() -> None:
    texts = edited(("roles.yaml", "    permissions: {}", "    permissions: {}\n    restrictedFeatures: [u.listUsers]"))
    line = line_of(texts["roles.yaml"], "u.listUsers")
    assert problems_of(texts) == [f"roles.yaml:{line}: role default: default cannot be restricted"]


def test_file_version_must_be_1() -> None:
    texts = edited(("roles.yaml", "version: 1", "version: 2"))
    assert problems_of(texts) == [f"roles.yaml:{line_of(texts['roles.yaml'], 'version: 2')}: version must be 1"]


def test_missing_file_is_reported() -> None:
    texts = {name: text for name, text in TEXTS.items() if name != "scopes.yaml"}
    assert "scopes.yaml:1: file is missing" in problems_of(texts)


def test_several_problems_are_all_reported_and_sorted() -> None:
    texts = edited(
        ("roles.yaml", "    permissions: {}", "    permissions: {}\n    restrictedFeatures: [u.listUsers]"),
        ("roles.yaml", "      createGroup: deny\n      blockUser", "      createGroup: maybe\n      blockUser"),
        ("roles.yaml", "restrictedFeatures: [u.joinGroup]", "restrictedFeatures: [u.teleport]"),
        ("scopes.yaml", "      kickMembers.allowedScopes: [participant]", "      kickMembers.allowedScopes: [owner]"),
        ("scopes.yaml", "      changeScope: allow\n      addMembers: allow",
         "      changeScope: allow\n      fly: allow\n      addMembers: allow"),
        ("catalogue.yaml", "  createCall: {actions: [initiateCall], title: Start a call}",
         "  createCall: {actions: [startCall], title: Start a call}"),
    )
    model = MODEL.replace("r = layer, sub, dom, obj", "r = sub, dom, obj")
    roles, scopes, catalogue = texts["roles.yaml"], texts["scopes.yaml"], texts["catalogue.yaml"]
    expected = [
        f"catalogue.yaml:{line_of(catalogue, 'startCall')}: feature createCall: unknown action 'startCall'",
        "model.conf:1: r must be defined as r = layer, sub, dom, obj",
        f"roles.yaml:{line_of(roles, 'u.listUsers')}: role default: default cannot be restricted",
        f"roles.yaml:{line_of(roles, 'createGroup: maybe')}: role support: createGroup must be one of allow, deny; "
        "got 'maybe'",
        f"roles.yaml:{line_of(roles, 'u.teleport')}: role restricted: unknown feature 'u.teleport'",
        f"scopes.yaml:{line_of(scopes, 'fly: allow')}: scope admin: unknown permission key 'fly'",
        f"scopes.yaml:{line_of(scopes, '[owner]')}: scope moderator: kickMembers.allowedScopes does not allow "
        "'owner'; allowed: admin, moderator, participant",
    ]
    problems = problems_of(texts, model)
    assert problems == expected
    # sorted by file, then by line as a number (9 before 14), then message
    keyed = [(p.split(":")[0], int(p.split(":")[1])) for p in problems]
    assert keyed == sorted(keyed)
    assert line_of(roles, "u.listUsers") < 10 < line_of(roles, "createGroup: maybe")


def test_policy_error_message_lists_every_problem() -> None:
    texts = edited(("roles.yaml", "version: 1", "version: 3"),
                   ("scopes.yaml", "version: 1", "version: 3"))
    with pytest.raises(PolicyError) as info:
        load_policy_texts(texts, MODEL)
    assert len(info.value.problems) == 2
    for problem in info.value.problems:
        assert problem in info.value.message


# -- the shipped files -------------------------------------------------------------------------
# Spec §3.2 (RBAC), with its type codes: B allowDeny, M mode, R rolesStringArray,
# S stringArray (vocabulary), X customStringArray.
T = ("text", "image", "audio", "video", "file")
UG = ("user", "group")
MC = ("message", "custom")
GT = ("public", "password", "private")
RBAC_KEYS: dict[str, str | tuple[str, ...]] = {
    # Users
    "listUsers": "B", "listUsers.mode": "M", "listUsers.allowedRoles": "R",
    "getUserDetails": "B", "getUserDetails.mode": "M", "getUserDetails.allowedRoles": "R",
    "blockUser": "B", "blockUser.allowedRoles": "R", "listBlockedUser": "B", "listBlockedUser.allowedRoles": "R",
    "unblockedUser": "B", "unblockedUser.allowedRoles": "R", "editProfile": "B",
    # Messages
    "listMessages": "B", "listMessages.mode": "M", "listMessages.allowedReceiverTypes": UG,
    "listMessages.allowedSenderRoles": "R", "listMessages.allowedMessageCategories": MC,
    "listMessages.allowedMessageTypes": T, "getMessageDetails": "B", "getMessageDetails.mode": "M",
    "sendMessage": "B", "sendMessage.mode": "M", "sendMessage.allowedReceiverTypes": UG,
    "sendMessage.allowedReceiverRoles": "R", "sendMessage.allowedMessageCategories": MC,
    "sendMessage.allowedMessageTypes": T, "sendMessage.allowedCustomTypes": "X",
    "sendMessage.allowedMimeTypes": "X", "editMessage": "B", "deleteMessage": "B",
    # Threads
    "listThreadedMessages": "B", "sendThreadedMessage": "B", "sendThreadedMessage.allowedReceiverTypes": UG,
    "sendThreadedMessage.allowedReceiverRoles": "R", "sendThreadedMessage.allowedMessageCategories": MC,
    "sendThreadedMessage.allowedMessageTypes": T, "sendThreadedMessage.allowedCustomTypes": "X",
    "sendThreadedMessage.allowedMimeTypes": "X", "editThreadedMessage": "B", "deleteThreadedMessage": "B",
    # Reactions
    "listReactions": "B", "addReaction": "B",
    # Calls
    "initiateCall": "B", "initiateCall.allowedReceiverTypes": UG, "initiateCall.allowedReceiverRoles": "R",
    "joinCall": "B",
    # Conversations
    "listConversations": "B", "updateConversation": "B", "deleteConversation": "B",
    # Groups
    "listGroups": "B", "listGroups.allowedGroupTypes": GT, "getGroupDetails": "B",
    "getGroupDetails.allowedGroupTypes": GT, "createGroup": "B", "createGroup.allowedGroupTypes": GT,
    "joinGroup": "B", "joinGroup.allowedGroupTypes": ("public", "password"),
}
SC = ("admin", "moderator", "participant")
# Spec §4.2 (SBAC) plus changeScope (product §1).
SBAC_KEYS: dict[str, str | tuple[str, ...]] = {
    # Group
    "editGroup": "B", "deleteGroup": "B", "leaveGroup": "B",
    # Members
    "listMembers": "B", "listMembers.allowedScopes": SC, "addMembers": "B", "addMembers.allowedScopes": SC,
    "kickMembers": "B", "kickMembers.allowedScopes": SC, "listBannedUsers": "B", "ban": "B",
    "ban.allowedScopes": SC, "unban": "B",
    # Messages
    "listMessages.allowedMessageCategories": MC, "listMessages.allowedMessageTypes": T,
    "listMessages.historyBeforeJoin": "B", "sendMessage": "B", "sendMessage.allowedMessageCategories": MC,
    "sendMessage.allowedMessageTypes": T, "sendMessage.allowedCustomTypes": "X",
    "sendMessage.allowedMimeTypes": "X", "editMessage": "B", "deleteMessage": "B",
    # Threads
    "listThreadedMessages": "B", "sendThreadedMessage": "B", "sendThreadedMessage.allowedMessageCategories": MC,
    "sendThreadedMessage.allowedMessageTypes": T, "sendThreadedMessage.allowedCustomTypes": "X",
    "sendThreadedMessage.allowedMimeTypes": "X", "editThreadedMessage": "B", "deleteThreadedMessage": "B",
    # Reactions, calls
    "listReactions": "B", "addReaction": "B", "initiateCall": "B", "joinCall": "B",
    # the product's own
    "changeScope": "B",
}
TYPE_CODES = {"B": "allowDeny", "M": "mode", "R": "rolesStringArray", "X": "customStringArray"}


@pytest.fixture(scope="module")
def shipped() -> PolicySet:
    return load_policy(REPO / "policies")


def test_shipped_policies_load(shipped: PolicySet) -> None:
    assert set(shipped.scopes) == {"admin", "moderator", "participant"}
    assert shipped.scopes["admin"].rank > shipped.scopes["moderator"].rank > shipped.scopes["participant"].rank
    assert {"default", "support", "restricted"} <= set(shipped.roles)
    assert shipped.content_hash == load_policy_texts(dict(TEXTS), MODEL).content_hash


@pytest.mark.parametrize(("layer", "expected"), [("role", RBAC_KEYS), ("scope", SBAC_KEYS)])
def test_shipped_catalogue_has_every_spec_key(shipped: PolicySet, layer: str,
                                              expected: dict[str, str | tuple[str, ...]]) -> None:
    keys = shipped.keys_of(layer)
    missing = sorted(set(expected) - set(keys))
    assert not missing, f"{layer} keys missing from catalogue.yaml: {missing}"
    for key, code in expected.items():
        defn = keys[key]
        if isinstance(code, tuple):
            assert defn.type == "stringArray", (key, defn.type)
            assert defn.values == code, (key, defn.values)
        else:
            assert defn.type == TYPE_CODES[code], (key, defn.type)


def test_rbac_defaults_follow_the_spec(shipped: PolicySet) -> None:
    """§3.2: B defaults to allow, M to all, every array key to null (unrestricted)."""
    for key, code in RBAC_KEYS.items():
        default = shipped.role_keys[key].default
        assert default == {"B": "allow", "M": "all"}.get(code if isinstance(code, str) else "", None), (key, default)


def test_every_action_key_is_an_authorize_action(shipped: PolicySet) -> None:
    for key in (*RBAC_KEYS, *SBAC_KEYS):
        if "." not in key:
            assert key in shipped.actions, key
    for name in ("kickMembers", "ban", "unban", "changeScope", "addMembers"):
        assert shipped.actions[name].target_required, name


def test_shipped_roles_and_scopes_hold_the_seeded_values(shipped: PolicySet) -> None:
    assert shipped.roles["support"].permissions == {"createGroup": "deny", "blockUser": "deny"}
    assert shipped.roles["restricted"].permissions["sendMessage.allowedMessageTypes"] == ["text"]
    assert shipped.roles["restricted"].restricted_features == frozenset({"joinGroup"})
    assert shipped.roles["default"].restricted_features == frozenset()
    assert shipped.scopes["moderator"].permissions["kickMembers.allowedScopes"] == ["participant"]
