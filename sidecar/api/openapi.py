"""The OpenAPI 3.1 document of every route (GET /openapi.json) and a readable page of it (GET /docs).

The document is a plain dict built from the small helpers below (envelopes, pagination, error
responses with each route's codes) by build_document(settings), once per app (create_app calls
install): the limits a deployment sets (max_batch, max_roles, max_body_bytes, revision_wait_s)
come from its Settings, the fixed ones (ids, scopes, members per call, paging) from the modules
that enforce them. tests/test_openapi.py checks that every rule of the app's URL map is in it and
that real responses match it; tests/test_fuzz_schemathesis.py fuzzes a live server against it.
Change a route, change its entry here.

/docs is rendered on the server from the same dict: plain HTML and inline CSS, nothing loaded
from anywhere else.
"""
from __future__ import annotations

import html
import json
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify

from sidecar.config import Settings
from sidecar.core import SCAN_LIMIT
from sidecar.groups import MAX_MEMBERS_PER_CALL
from sidecar.policy.loader import ID_PATTERN as STORED_ID_RE
from sidecar.policy.loader import SCOPE_NAMES
from sidecar.validation import (
    ID_RE,
    MAX_CONTEXT_KEYS,
    MAX_CONTEXT_STRING,
    MAX_METADATA_BYTES,
    MAX_PER_PAGE,
    MAX_REVISION,
    TOKEN_RE,
)
from sidecar.wire import MAX_LIST_LIMIT

bp = Blueprint("openapi", __name__)
DOCUMENT_KEY = "chatauthz.openapi"  # app.extensions: the document of this app's settings
PAGE_KEY = "chatauthz.openapi.page"  # app.extensions: /docs, rendered on first request

JSON = "application/json"
ID_PATTERN = f"^{ID_RE.pattern}$"     # what a request may send (the server lowercases)
STORED_ID_PATTERN = f"^{STORED_ID_RE.pattern}$"  # what a response shows
PERMISSION_PATTERN = "^[A-Za-z0-9_.-]{1,100}$"
SCOPES = list(SCOPE_NAMES)
_SCOPE = f"({'|'.join(SCOPE_NAMES)})"
SCOPES_PATTERN = f"^([\\s,]*{_SCOPE}(\\s*,[\\s,]*{_SCOPE})*[\\s,]*)?$"  # blanks and empty items are ignored
DECISION_CODES = ["ERR_PERMISSION_DENIED", "ERR_GUID_NOT_FOUND", "ERR_GUID_ALREADY_EXISTS",
                  "ERR_BANNED_GROUPMEMBER", "ERR_GROUP_NOT_JOINED", "ERR_ALREADY_JOINED",
                  "ERR_GROUP_NO_ADMIN_SCOPE", "ERR_GROUP_NO_MODERATOR_SCOPE", "ERR_GROUP_NO_CLEARANCE",
                  "ERR_GROUP_NO_SCOPE_CLEARANCE", "ERR_GROUP_NO_SELF_ACTION", "ERR_NOT_A_MEMBER",
                  "ERR_ALREADY_BANNED", "ERR_NOT_A_BANNED_USER", "ERR_SAME_SCOPE", "ERR_STATE_TOO_STALE",
                  "ERR_STATE_NOT_LOADED"]


# -- schema helpers ------------------------------------------------------------------------------
def ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(properties: dict[str, Any], required: tuple[str, ...] = (), *, closed: bool = True,
        **extra: Any) -> dict[str, Any]:
    """An object schema; closed (additionalProperties: false) unless told otherwise."""
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    schema.update(extra)
    return schema


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def string(max_length: int | None = None, **extra: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", **extra}
    if max_length is not None:
        schema["maxLength"] = max_length
    return schema


def id_string(description: str) -> dict[str, Any]:
    return string(pattern=ID_PATTERN, description=description + " Alpha-dash, 1-100 characters; lowercased.")


def array(items: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "array", "items": items, **extra}


def integer(minimum: int = 0, maximum: int | None = None, **extra: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer", "minimum": minimum, **extra}
    if maximum is not None:
        schema["maximum"] = maximum
    return schema


# -- envelopes -----------------------------------------------------------------------------------
def data(schema: dict[str, Any]) -> dict[str, Any]:
    """A read: {"data": ...}."""
    return obj({"data": schema}, ("data",))


TOKEN_PATTERN = f"^{TOKEN_RE.pattern}$"
TOKEN = string(pattern=TOKEN_PATTERN, description="The consistency token \"<epoch>:<revision>\": the store's "
               "epoch (it changes when the store lost data) and the revision. Pass it as atLeastRevision.")


def written(schema: dict[str, Any]) -> dict[str, Any]:
    """A write: {"data": ..., "revision": n, "token": "<epoch>:<n>"}, n the store revision after it."""
    return obj({"data": schema, "revision": integer(description="The store revision after this write."),
                "token": TOKEN}, ("data", "revision", "token"))


def paged(item: dict[str, Any]) -> dict[str, Any]:
    """A list: {"data": [...], "meta": {"pagination": {...}}}."""
    return obj({"data": array(item), "meta": obj({"pagination": ref("Pagination")}, ("pagination",))},
               ("data", "meta"))


def json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {JSON: {"schema": schema}}


def ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"200": {"description": description, "content": json_content(schema)}}


def error_response(status: int, codes: list[str]) -> dict[str, Any]:
    """One status's error response; the envelope's code is one of `codes`."""
    schema = {"allOf": [ref("Error"), obj({"error": obj({"code": {"enum": codes}}, closed=False)},
                                          closed=False)]}
    return {"description": f"{STATUS_TEXT.get(status, 'Error')}: " + ", ".join(codes),
            "content": json_content(schema)}


STATUS_TEXT = {400: "Bad request", 401: "No valid key", 403: "Refused", 404: "Not found", 409: "Conflict",
               413: "Body too large", 503: "Unavailable"}
AUTH_401 = ["AUTH_ERR_EMPTY_APIKEY", "AUTH_ERR_APIKEY_NOT_FOUND"]
BAD = "ERR_BAD_REQUEST"
NO_ROUTE = "ERR_API_NOT_FOUND"  # a path parameter holding '/' names no route
STORE = "ERR_STORE_UNAVAILABLE"


def errors(*, full_access: bool = True, body: bool = False, store: bool = True,
           **by_status: list[str]) -> dict[str, Any]:
    """Error responses: the key's (401, and 403 for an authorize-only key on a management route),
    413 for a route with a body, 503 when the store cannot be read or written, plus `by_status`
    given as s400=[...], s404=[...]."""
    merged: dict[int, list[str]] = {401: list(AUTH_401)}
    if full_access:
        merged[403] = ["AUTH_ERR_NO_ACCESS"]
    if body:
        merged.setdefault(400, []).append(BAD)
        merged[413] = ["ERR_PAYLOAD_TOO_LARGE"]
    if store:
        merged[503] = [STORE, "ERR_STORE_REPLACED", "ERR_WRITE_NOT_REPLICATED"]
    for key, codes in by_status.items():
        status = int(key.removeprefix("s"))
        merged[status] = list(dict.fromkeys([*merged.get(status, []), *codes]))
    return {str(status): error_response(status, codes) for status, codes in sorted(merged.items())}


# -- parameters and bodies -------------------------------------------------------------------------
def path_id(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": f"{description}; lowercased by the server.",
            "schema": string(pattern=ID_PATTERN)}


def path_param(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": schema}


def query(name: str, description: str, schema: dict[str, Any], *, empty_is_default: bool = False) -> dict[str, Any]:
    param = {"name": name, "in": "query", "required": False, "description": description, "schema": schema}
    if empty_is_default:  # ?perPage= is taken as absent
        param["allowEmptyValue"] = True
    return param


ROLE = path_id("role", "The role id")
UID = path_id("uid", "The user's uid")
GUID = path_id("guid", "The group's guid")
SCOPE = path_param("scope", "A group scope; another value is ERR_GROUP_SCOPE_NOT_FOUND.", {"enum": SCOPES})
PERMISSION = path_param("permission", "A permission key of the catalogue, e.g. sendMessage.allowedMessageTypes.",
                        string(pattern=PERMISSION_PATTERN))
PAGING = [query("perPage", "Items per page (default 100).", integer(1, MAX_PER_PAGE), empty_is_default=True),
          query("page", "The page, from 1 (default 1).", integer(1, 10**9), empty_is_default=True)]
ON_BEHALF_OF = {"name": "onBehalfOf", "in": "header", "required": False,
                "description": "Decide the operation as this uid first (with its role and scope in the group) "
                               "and do it only if allowed: check and change in one step. A refusal is a 403 "
                               "with the decision's code and reason.",
                "schema": string(pattern=ID_PATTERN)}


def body(schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    request_body: dict[str, Any] = {"required": True, "content": json_content(schema)}
    if description:
        request_body["description"] = description
    return request_body


# -- operations ----------------------------------------------------------------------------------
def op(summary: str, tag: str, responses: dict[str, Any], *, description: str = "",
       params: list[dict[str, Any]] | None = None, request: dict[str, Any] | None = None,
       open_route: bool = False) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary, "tags": [tag]}
    if description:
        operation["description"] = description
    if params:
        operation["parameters"] = params
    if request:
        operation["requestBody"] = request
    if open_route:
        operation["security"] = []
    operation["responses"] = responses
    return operation


def success() -> dict[str, Any]:
    return obj({"success": {"const": True}, "message": string()}, ("success", "message"))


def mapped() -> dict[str, Any]:
    """The per-key answer of a permissions or features write, plus the explicit map after it."""
    return obj({"permissions": ref("PermissionMap")}, ("permissions",),
               closed=False, additionalProperties=success())


def authorize_fields(settings: Settings) -> dict[str, Any]:
    """The fields of an /authorize check (also of the capability and list questions)."""
    return {
        "uid": id_string("The user asking."),
        "action": string(100, minLength=1, description="An action of the catalogue (e.g. sendMessage, "
                         "kickMembers); an unknown one is a 400.", examples=["sendMessage", "kickMembers"]),
        "guid": nullable(id_string("The group, for a group action (required by those); decided with the "
                                   "group's facts, and a 400 for an action that takes no group.")),
        "target": nullable(id_string("The uid acted on (required by member actions).")),
        "context": nullable({"type": "object", "maxProperties": MAX_CONTEXT_KEYS,
                             "description": "Facts of the request: messageType, receiverType, mimeType, "
                                            "messageCategory, isFriend, newScope (required by changeScope), ...",
                             "properties": {"newScope": {"enum": SCOPES}},
                             "additionalProperties": {"anyOf": [string(MAX_CONTEXT_STRING), {"type": "number"},
                                                                {"type": "boolean"}]}}),
        "atLeastRevision": {
            "anyOf": [integer(0, MAX_REVISION), string(pattern=TOKEN_PATTERN), {"type": "null"}],
            "description": "A write's token \"<epoch>:<revision>\" (or a bare revision, taken as the store's "
                           f"current epoch): wait (at most {settings.revision_wait_s:g} s, CHATAUTHZ_REVISION_WAIT_S) "
                           "until this sidecar has that revision of that epoch; "
                           "else 503 ERR_REVISION_NOT_REACHED. A token of another epoch (the store lost data "
                           "since) is never satisfied: 409 ERR_REVISION_EPOCH_MISMATCH."}}


LIST_PAGING: dict[str, Any] = {
    "cursor": nullable(id_string("Resume after this id (the nextCursor of the page before).")),
    "limit": integer(1, MAX_LIST_LIMIT, description="At most this many items (default 100).")}
LIST_ANSWER: dict[str, Any] = {
    "nextCursor": nullable(string(description="Where the next page starts; null when there is no more.")),
    "revision": integer(), "token": TOKEN, "policyHash": string(), "stalenessSeconds": {"type": "number", "minimum": 0},
    "refused": obj({"code": string(), "reason": string()}, ("code", "reason"))}


def schemas(settings: Settings) -> dict[str, Any]:
    """The components' schemas; the request limits a deployment sets come from `settings`."""
    return {
        "Error": obj({"error": ref("ErrorBody")}, ("error",)),
        "ErrorBody": obj({
            "code": string(description="A stable code, e.g. ERR_BAD_REQUEST, ERR_ROLE_NOT_FOUND."),
            "message": string(minLength=1, description="What went wrong, for a person."),
            "details": {"type": "object", "description": "For ERR_BAD_REQUEST: field -> its problems.",
                        "additionalProperties": array(string())}}, ("code", "message")),
        "Pagination": obj({"total": integer(), "count": integer(), "per_page": integer(1, MAX_PER_PAGE),
                           "current_page": integer(1), "total_pages": integer(1)},
                          ("total", "count", "per_page", "current_page", "total_pages")),
        "RoleSettings": obj({"listUsers": {"enum": ["all", "friendsOnly"]},
                             "sendMessagesTo": {"enum": ["all", "friendsOnly"]}},
                            description="Legacy settings (CometChat)."),
        "Metadata": {"type": "object",
                     "description": f"Free-form JSON object, at most {MAX_METADATA_BYTES} bytes as compact JSON."},
        "Role": obj({"role": string(pattern=STORED_ID_PATTERN), "name": string(100), "description": string(255),
                     "metadata": ref("Metadata"), "settings": ref("RoleSettings"),
                     "createdAt": integer(description="Unix seconds; 0 for a role of the policy files."),
                     "updatedAt": integer(description="Unix seconds of the last runtime edit."),
                     "source": string(description="Where the role comes from: a policy file, runtime, or both.")},
                    ("role", "name", "createdAt", "source")),
        "PermissionRow": obj({"id": string(description="The permission key."), "type": {"enum": ["role", "scope"]},
                              "title": string(), "dataType": string(),
                              "availableValues": nullable(array(string())), "defaultValue": {}, "value": {},
                              "source": string(description="Where the value comes from.")},
                             ("id", "type", "title", "dataType", "availableValues", "defaultValue", "value", "source")),
        "PermissionMap": {"type": "object", "description": "The explicit runtime values: permission key -> value."},
        "RestrictedFeature": obj({"key": string(pattern="^u\\."), "title": string(), "actions": array(string()),
                                  "source": string()}, ("key", "title", "actions", "source")),
        "User": obj({"uid": string(pattern=STORED_ID_PATTERN), "role": string(pattern=STORED_ID_PATTERN),
                     "assigned": {"type": "boolean", "description": "false: the user holds the default role."}},
                    ("uid", "role", "assigned")),
        "Group": obj({"guid": string(pattern=STORED_ID_PATTERN), "owner": string(pattern=STORED_ID_PATTERN),
                      "membersCount": integer(), "bannedCount": integer(), "hasOverrides": {"type": "boolean"}},
                     ("guid", "owner", "membersCount", "bannedCount", "hasOverrides")),
        "Member": obj({"uid": string(pattern=STORED_ID_PATTERN), "scope": {"enum": SCOPES},
                       "role": string(pattern=STORED_ID_PATTERN)}, ("uid", "scope", "role")),
        "MemberResult": {"oneOf": [obj({"success": {"const": True}}, ("success",)),
                                   obj({"success": {"const": False}, "error": ref("ErrorBody")},
                                       ("success", "error"))]},
        "Change": obj({"revision": integer(1), "at": {"type": "number", "description": "Unix seconds."},
                       "actor": string(description="The name of the key that wrote."),
                       "ops": array({"type": "object", "required": ["op"], "properties": {"op": string()}})},
                      ("revision", "at", "actor", "ops")),
        "AuthorizeRequest": obj(authorize_fields(settings), ("uid", "action")),
        "Capabilities": obj({
            "uid": string(), "guid": nullable(string()), "target": nullable(string()), "role": string(),
            "scope": nullable(string()), "revision": integer(), "token": TOKEN, "policyHash": string(),
            "stalenessSeconds": {"type": "number", "minimum": 0},
            "actions": {"type": "object", "additionalProperties": obj({
                "allowed": {"type": "boolean"}, "code": {"enum": DECISION_CODES}, "reason": string(),
                "layer": {"enum": ["role", "membership", "scope", "clearance", "store"]}, "role": string(),
                "scope": string(), "error": ref("ErrorBody"),
                "constraints": array(obj({"layer": {"enum": ["role", "scope"]}, "key": string(), "value": {},
                                          "source": string()}, ("layer", "key", "value", "source"))),
                "targets": obj({"actsOn": array({"enum": SCOPES}), "grants": array({"enum": SCOPES})},
                               ("actsOn",))})}},
            ("uid", "role", "revision", "token", "policyHash", "actions")),
        "GroupList": obj({"groups": array(obj({"guid": string(), "scope": nullable(string())}, ("guid", "scope"))),
                          **LIST_ANSWER}, ("groups", "nextCursor", "revision", "token", "policyHash")),
        "MemberList": obj({"members": array(obj({"uid": string(), "scope": nullable(string())}, ("uid", "scope"))),
                           **LIST_ANSWER}, ("members", "nextCursor", "revision", "token", "policyHash")),
        "Decision": obj({
            "allowed": {"type": "boolean"},
            "code": {"enum": DECISION_CODES, "description": "Present on a denial."},
            "reason": string(description="Which layer, key, value and source decided."),
            "layer": {"enum": ["role", "membership", "scope", "clearance", "store"]},
            "role": string(), "scope": string(description="The user's scope in the group, or owner."),
            "revision": integer(), "token": TOKEN, "policyHash": string(), "decisionId": string(),
            "stalenessSeconds": {"type": "number", "minimum": 0, "description": "With a shared store only."}},
            ("allowed", "reason", "layer", "role", "revision", "token", "policyHash", "decisionId")),
        "Ready": obj({
            "status": {"enum": ["ready", "degraded"]}, "policyHash": string(), "revision": integer(),
            "token": string(description="\"<epoch>:<revision>\" of the state this sidecar answers from."),
            "stalenessSeconds": {"type": "number", "minimum": 0},
            "dataLoss": obj({
                "epoch": string(description="The epoch whose writes the store lost."),
                "first": integer(), "last": integer(description="Revisions first..last were missing from the store."),
                "status": {"enum": ["pending", "written", "followed"],
                           "description": "pending: not written back yet (503, writes refused); written: this "
                                          "sidecar wrote its state back; followed: another sidecar did."},
                "newEpoch": nullable(string()), "restoredTo": nullable(integer(
                    description="Revisions up to this are back under newEpoch; the rest are lost for good.")),
                "detail": string()}, ("epoch", "first", "last", "status", "newEpoch", "restoredTo", "detail")),
            "sync": obj({"status": string(), "message": string()}, ("status", "message")),
            "policyProblems": array(string()), "reasons": array(string())},
            ("status", "policyHash", "revision", "stalenessSeconds")),
    }

ROLE_FIELDS = {"name": string(100, pattern="\\S", description="Display name, at most 100 characters."),
               "description": nullable(string(255)), "metadata": nullable(ref("Metadata")),
               "settings": nullable(ref("RoleSettings"))}
SCOPE_LIST = nullable(array(string(), maxItems=MAX_MEMBERS_PER_CALL))
PERMISSIONS_BODY = obj({"permissions": {"type": "object", "minProperties": 1,
                                        "description": "permission key -> value, each checked against the "
                                                       "catalogue; one bad key changes nothing."}},
                       ("permissions",))
FEATURES = array(string(), minItems=1, description="Feature keys, with or without the u. prefix.")
# allowAll: true, else featuresToAllow is required
CONDITIONAL_FEATURES: dict[str, Any] = {
    "if": {"required": ["allowAll"], "properties": {"allowAll": {"const": True}}},
    "else": {"required": ["featuresToAllow"], "properties": {"featuresToAllow": FEATURES}}}
ROLE_404 = ["ERR_ROLE_NOT_FOUND", NO_ROUTE]
GROUP_404 = ["ERR_GUID_NOT_FOUND", NO_ROUTE]
REFUSALS = DECISION_CODES  # an onBehalfOf write refused: the decision's code, as a 403


def _paths(settings: Settings) -> dict[str, dict[str, Any]]:
    check = authorize_fields(settings)
    decision_errors = errors(full_access=False, body=True, store=False, s503=["ERR_REVISION_NOT_REACHED"],
                             s409=["ERR_REVISION_EPOCH_MISMATCH"])
    return {
        "/authorize": {"post": op(
            "Decide one request", "Decisions", {**ok("The decision: a denial is a 200 with allowed=false.",
                                                    data(ref("Decision"))), **decision_errors},
            description="The role layer, then membership, the scope layer and clearance; the first refusal "
                        "answers. An authorize-only key may call this.",
            request=body(ref("AuthorizeRequest")))},
        "/authorize/batch": {"post": op(
            "Decide many requests", "Decisions",
            {**ok("The results in order: each a decision or its own error.",
                  data(obj({"results": array({"oneOf": [ref("Decision"),
                                                        obj({"error": ref("ErrorBody")}, ("error",))]})},
                           ("results",)))),
             **errors(full_access=False, body=True, store=False)},
            description=f"At most {settings.max_batch} checks (CHATAUTHZ_MAX_BATCH). A bad check fails alone, "
                        "in its result.",
            request=body(obj({"checks": array({
                "description": "A check: the body of POST /authorize (the AuthorizeRequest schema). Any JSON value "
                               "is taken: one that is not a valid check is answered by its own error, in its place.",
                "examples": [{"uid": "alice", "action": "sendMessage", "guid": "support-team"}]},
                minItems=1, maxItems=settings.max_batch)}, ("checks",))))},
        "/authorize/capabilities": {"post": op(
            "Everything a user may do", "Decisions",
            {**ok("Every action of the catalogue, each decided as /authorize decides it.", data(ref("Capabilities"))),
             **decision_errors},
            description="One state, one answer per action: the decision (or the 400 /authorize gives for it), "
                        "the constraint values that apply and, for an action on a member asked without a "
                        "target, the scopes the user may act on or give. What a UI renders buttons from.",
            request=body(obj({k: v for k, v in check.items() if k != "action"}, ("uid",))))},
        "/authorize/groups": {"post": op(
            "The groups where a user may do an action", "Decisions",
            {**ok("The groups, by guid, each allowed as /authorize would allow it.", data(ref("GroupList"))),
             **decision_errors},
            description=f"Candidates are the user's own groups (every group for getGroupDetails and joinGroup); "
                        f"at most {SCAN_LIMIT:,} are looked at per call and nextCursor resumes after them.",
            request=body(obj({**{k: check[k] for k in ("uid", "action", "context", "atLeastRevision")},
                              **LIST_PAGING}, ("uid", "action"))))},
        "/authorize/members": {"post": op(
            "The members of a group who may do an action", "Decisions",
            {**ok("The members (and owner), by uid, each allowed as /authorize would allow it.",
                  data(ref("MemberList"))),
             **errors(full_access=False, body=True, store=False, s503=["ERR_REVISION_NOT_REACHED"],
                      s409=["ERR_REVISION_EPOCH_MISMATCH"], s404=["ERR_GUID_NOT_FOUND"])},
            request=body(obj({**{k: check[k] for k in ("action", "target", "context", "atLeastRevision")},
                              "guid": id_string("The group."), **LIST_PAGING}, ("guid", "action"))))},
        "/roles": {
            "post": op("Create a role", "Roles",
                       {**ok("The role.", written(ref("Role"))),
                        **errors(body=True, s403=["ERR_PLAN_QUOTA_RESTRICTION"], s409=["ERR_ROLE_ALREADY_EXISTS"])},
                       description=f"At most {settings.max_roles} roles (CHATAUTHZ_MAX_ROLES), counting the "
                                   "policy files' roles.",
                       request=body(obj({"role": id_string("The new role's id."), **ROLE_FIELDS},
                                        ("role", "name")))),
            "get": op("List roles", "Roles", {**ok("The roles, by id.", paged(ref("Role"))),
                                              **errors(s400=[BAD])}, params=PAGING)},
        "/roles/{role}": {
            "parameters": [ROLE],
            "get": op("Get a role", "Roles", {**ok("The role.", data(ref("Role"))),
                                             **errors(s400=[BAD], s404=ROLE_404)}),
            "put": op("Update a role", "Roles",
                      {**ok("The role after the update.", written(ref("Role"))),
                       **errors(body=True, s404=ROLE_404)},
                      description="A role of the policy files may be edited at runtime. A field may not be "
                                  "both set and unset; a field sent as null is left as it is.",
                      request=body(obj({**ROLE_FIELDS, "name": nullable(ROLE_FIELDS["name"]), "unset": nullable(array(
                          {"enum": ["description", "metadata", "settings"]}))}))),
            "delete": op("Delete a role", "Roles",
                         {**ok("Deleted; its users now hold the default role.", written(obj({
                             "success": {"const": True}, "message": string(),
                             "usersMovedToDefault": integer()}, ("success", "message", "usersMovedToDefault")))),
                          **errors(s400=[BAD], s403=["ERR_ROLE_DELETE_DENIED"], s404=ROLE_404)},
                         description="The default role and the roles of the policy files cannot be deleted.")},
        "/roles/{role}/permissions": {
            "parameters": [ROLE],
            "get": op("List a role's permissions", "Roles",
                      {**ok("Every role key with its value and where it comes from.", paged(ref("PermissionRow"))),
                       **errors(s400=[BAD], s404=ROLE_404)}, params=PAGING),
            "put": op("Set a role's permissions", "Roles",
                      {**ok("One answer per key sent, and the role's explicit values after the write.",
                            written(mapped())),
                       **errors(body=True, s404=ROLE_404)},
                      description="Merges: keys not sent keep their values.", request=body(PERMISSIONS_BODY))},
        "/roles/{role}/permissions/{permission}": {
            "parameters": [ROLE, PERMISSION],
            "delete": op("Unset a role's runtime permission value", "Roles",
                         {**ok("The role's remaining explicit values.", written(obj(
                             {"message": string(), "permissions": ref("PermissionMap")}, ("message", "permissions")))),
                          **errors(s400=[BAD], s404=[*ROLE_404, "ERR_PERMISSION_NOT_FOUND"])})},
        "/roles/{role}/restrictedfeatures": {
            "parameters": [ROLE],
            "post": op("Restrict features of a role", "Roles",
                       {**ok("One answer per feature key sent.", written(
                           {"type": "object", "additionalProperties": success()})),
                        **errors(body=True, s404=ROLE_404)},
                       description="CometChat's older API; the default role cannot be restricted.",
                       request=body(obj({"featuresToRestrict": FEATURES}, ("featuresToRestrict",)))),
            "get": op("List a role's restricted features", "Roles",
                      {**ok("The restricted features.", paged(ref("RestrictedFeature"))),
                       **errors(s400=[BAD], s404=ROLE_404)}, params=PAGING),
            "delete": op("Allow restricted features again", "Roles",
                         {**ok("Allowed.", written(success())), **errors(body=True, s404=ROLE_404)},
                         description="featuresToAllow is required unless allowAll is true (which allows all and "
                                     "ignores featuresToAllow).",
                         request=body(obj({"featuresToAllow": {"description": "Feature keys, with or without "
                                                                  "the u. prefix; not read when allowAll is true."},
                                           "allowAll": {"type": "boolean"}},
                                          **CONDITIONAL_FEATURES)))},
        "/users/{uid}": {
            "parameters": [UID],
            "get": op("Get a user's role", "Users", {**ok("The user.", data(ref("User"))),
                                                   **errors(s400=[BAD], s404=[NO_ROUTE])},
                      description="A user never assigned holds the default role."),
            "put": op("Set a user's role", "Users",
                      {**ok("The user.", written(ref("User"))), **errors(body=True, s404=ROLE_404)},
                      request=body(obj({"role": id_string("An existing role.")}, ("role",)))),
            "delete": op("Return a user to the default role", "Users",
                         {**ok("Done.", written(success())), **errors(s400=[BAD], s404=[NO_ROUTE])})},
        "/groups/{guid}": {
            "parameters": [GUID],
            "get": op("Get a group", "Groups", {**ok("The group.", data(ref("Group"))),
                                               **errors(s400=[BAD], s404=GROUP_404)}),
            "put": op("Create a group or set its owner", "Groups",
                      {**ok("The group.", written(ref("Group"))),
                       **errors(body=True, s403=REFUSALS, s404=[NO_ROUTE])},
                      description="Creates the group, or transfers it; the owner becomes an admin member (and "
                                  "is unbanned). With onBehalfOf: creating needs createGroup; a transfer needs "
                                  "transferOwnership and is the current owner's alone (ERR_GROUP_NO_CLEARANCE); "
                                  "naming the same owner needs editGroup.",
                      params=[ON_BEHALF_OF],
                      request=body(obj({"owner": id_string("The owner's uid.")}, ("owner",)))),
            "delete": op("Delete a group", "Groups", {**ok("Deleted.", written(success())),
                                                      **errors(s400=[BAD], s403=REFUSALS, s404=GROUP_404)},
                         params=[ON_BEHALF_OF])},
        "/groups/{guid}/members": {
            "parameters": [GUID],
            "post": op("Add (or ban) members", "Members",
                       {**ok("Per member: success, or its own error; only the lists sent appear.", written(obj(
                           {name: {"type": "object", "additionalProperties": ref("MemberResult")}
                            for name in ("admins", "moderators", "participants", "usersToBan")}))),
                        **errors(body=True, s403=REFUSALS, s404=GROUP_404)},
                       description=f"At most {MAX_MEMBERS_PER_CALL} uids in all lists together, at least one. "
                                   "A uid in several lists gets the highest scope; one bad uid fails alone. On "
                                   "behalf of a user, more than one uid is massMemberOperate (owner or admin), "
                                   "refused as a whole with the decision's code.",
                       params=[ON_BEHALF_OF],
                       request=body(obj({"admins": SCOPE_LIST, "moderators": SCOPE_LIST,
                                         "participants": SCOPE_LIST, "usersToBan": SCOPE_LIST}))),
            "get": op("List members", "Members",
                      {**ok("The members, by uid.", paged(ref("Member"))), **errors(s400=[BAD], s404=GROUP_404)},
                      params=[query("scopes", "Only these scopes, comma-separated.",
                                    string(pattern=SCOPES_PATTERN)), *PAGING])},
        "/groups/{guid}/members/{uid}": {
            "parameters": [GUID, UID],
            "put": op("Change a member's scope (or add them)", "Members",
                      {**ok("The member.", written(obj({"guid": string(pattern=STORED_ID_PATTERN),
                                                        "uid": string(pattern=STORED_ID_PATTERN),
                                                        "scope": {"enum": SCOPES}}, ("guid", "uid", "scope")))),
                       **errors(body=True, s400=["ERR_SAME_SCOPE", "ERR_BANNED_GROUPMEMBER", "ERR_ALREADY_JOINED"],
                                s403=REFUSALS, s404=GROUP_404)},
                      params=[ON_BEHALF_OF],
                      request=body(obj({"scope": {"enum": SCOPES}}, ("scope",)))),
            "delete": op("Kick a member", "Members",
                         {**ok("Kicked.", written(success())),
                          **errors(s400=[BAD, "ERR_NOT_A_MEMBER"], s403=REFUSALS, s404=GROUP_404)},
                         description="The owner cannot be kicked.", params=[ON_BEHALF_OF])},
        "/groups/{guid}/bannedusers": {
            "parameters": [GUID],
            "get": op("List banned users", "Members",
                      {**ok("The banned uids.", paged(obj({"uid": string(pattern=STORED_ID_PATTERN)}, ("uid",)))),
                       **errors(s400=[BAD], s404=GROUP_404)}, params=PAGING)},
        "/groups/{guid}/bannedusers/{uid}": {
            "parameters": [GUID, UID],
            "post": op("Ban a user from a group", "Members",
                       {**ok("Banned.", written(success())),
                        **errors(s400=[BAD, "ERR_ALREADY_BANNED"], s403=REFUSALS, s404=GROUP_404)},
                       description="A member is removed; a non-member may be banned too. The owner cannot be.",
                       params=[ON_BEHALF_OF]),
            "delete": op("Unban a user", "Members",
                         {**ok("Unbanned.", written(success())),
                          **errors(s400=[BAD, "ERR_NOT_A_BANNED_USER"], s403=REFUSALS, s404=GROUP_404)},
                         params=[ON_BEHALF_OF])},
        "/groups/{guid}/scopes/{scope}/permissions": {
            "parameters": [GUID, SCOPE],
            "get": op("List a scope's permissions in a group", "Groups",
                      {**ok("Every scope key with its value in this group and where it comes from.",
                            paged(ref("PermissionRow"))),
                       **errors(s400=[BAD], s404=[*GROUP_404, "ERR_GROUP_SCOPE_NOT_FOUND"])}, params=PAGING),
            "put": op("Override a scope's permissions in a group", "Groups",
                      {**ok("One answer per key sent, and the group's explicit values for the scope.",
                            written(mapped())),
                       **errors(body=True, s404=[*GROUP_404, "ERR_GROUP_SCOPE_NOT_FOUND"])},
                      request=body(PERMISSIONS_BODY))},
        "/groups/{guid}/scopes/{scope}/permissions/{permission}": {
            "parameters": [GUID, SCOPE, PERMISSION],
            "delete": op("Remove a group's override of a scope permission", "Groups",
                         {**ok("The remaining overrides.", written(obj(
                             {"message": string(), "permissions": ref("PermissionMap")}, ("message", "permissions")))),
                          **errors(s400=[BAD], s404=[*GROUP_404, "ERR_GROUP_SCOPE_NOT_FOUND",
                                                     "ERR_PERMISSION_NOT_FOUND"])})},
        "/changes": {"get": op(
            "The change log", "Operations",
            {**ok("Who changed what, oldest first, with the values before.", paged(ref("Change"))),
             **errors(s400=[BAD])},
            params=[query("since", "Only changes after this revision (default 0).", integer(0, MAX_REVISION)),
                    *PAGING])},
        "/health/live": {"get": op("Liveness", "Operations",
                                   ok("The process answers.", data(obj({"status": {"const": "live"}}, ("status",)))),
                                   open_route=True)},
        "/health/ready": {"get": op(
            "Readiness", "Operations",
            {**ok("Ready.", data(ref("Ready"))),
             "503": {"description": "Degraded: the body says why (reasons); not an error envelope.",
                     "content": json_content(data(ref("Ready")))}},
            description="Policy loaded and the store reachable (or within --max-staleness).", open_route=True)},
        "/metrics": {"get": op("Prometheus metrics", "Operations",
                               {"200": {"description": "The Prometheus text exposition format.",
                                        "content": {"text/plain": {"schema": string()}}}}, open_route=True)},
        "/openapi.json": {"get": op("This document", "Operations",
                                    ok("The OpenAPI 3.1 document.", {"type": "object", "required": ["openapi"]}),
                                    open_route=True)},
        "/docs": {"get": op("This document, readable", "Operations",
                            {"200": {"description": "An HTML page; loads nothing from elsewhere.",
                                     "content": {"text/html": {"schema": string()}}}}, open_route=True)},
    }


DESCRIPTION = """\
Policy-as-code authorization sidecar for chat services, in CometChat's paths and shapes.

* Success: `{"data": ...}`; lists add `meta.pagination` (`total`, `count`, `per_page`, `current_page`,
  `total_pages`); every write answers with the store `revision` after it and its consistency `token`
  `"<epoch>:<revision>"` (pass it as `atLeastRevision`; the epoch changes when the store lost data).
* Errors: `{"error": {"code", "message", "details"?}}`; ERR_BAD_REQUEST (400) names each field in `details`.
  An unknown route is 404 ERR_API_NOT_FOUND, a wrong method 405 ERR_METHOD_NOT_ALLOWED.
* Keys: the `apikey` header. A full-access key calls everything; an authorize-only key calls
  `/authorize` alone (AUTH_ERR_NO_ACCESS, 403, elsewhere). Health, metrics and this document need no key.
* Ids (uid, guid, role) are alpha-dash, 1-100 characters, and lowercased by the server.
"""


def build_document(settings: Settings) -> dict[str, Any]:
    """The document of an app served with `settings` (its limits are the ones it enforces)."""
    description = DESCRIPTION + (f"* Bodies: JSON, at most {settings.max_body_bytes} bytes (CHATAUTHZ_MAX_BODY_BYTES); "
                                 "a larger one is 413 ERR_PAYLOAD_TOO_LARGE.\n")
    return {
        "openapi": "3.1.0",
        "info": {"title": "chatauthz", "version": "0.1.0", "description": description},
        "servers": [{"url": "/"}],
        "security": [{"apikey": []}],
        "tags": [{"name": name} for name in ("Decisions", "Roles", "Users", "Groups", "Members", "Operations")],
        "paths": _paths(settings),
        "components": {"schemas": schemas(settings),
                       "securitySchemes": {"apikey": {"type": "apiKey", "in": "header", "name": "apikey"}}},
    }




def install(app: Flask, settings: Settings) -> None:
    """Build this app's document from its settings; /openapi.json and /docs serve it."""
    app.extensions[DOCUMENT_KEY] = build_document(settings)
METHODS = ("get", "put", "post", "delete", "patch")


# -- the readable page -----------------------------------------------------------------------------
def _type_html(schema: Any) -> str:
    """A schema in a few words: `string, pattern ^[a-z]+$`, `integer 1..1000`, `Role or null`, ..."""
    esc = html.escape
    if not isinstance(schema, dict) or not schema:
        return "any JSON value"
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f'<a href="#schema-{esc(name)}">{esc(name)}</a>'
    if "enum" in schema:
        return "one of " + ", ".join(f"<code>{esc(json.dumps(v))}</code>" for v in schema["enum"])
    if "const" in schema:
        return f"<code>{esc(json.dumps(schema['const']))}</code>"
    if "anyOf" in schema or "oneOf" in schema:
        return " or ".join(_type_html(s) for s in schema.get("anyOf") or schema.get("oneOf") or [])
    kind = schema.get("type", "any JSON value")
    words = [esc(str(kind))]
    if kind in ("integer", "number") and ("minimum" in schema or "maximum" in schema):
        words.append(f"{schema.get('minimum', '')}..{schema.get('maximum', '')}")
    if kind == "string":
        if "minLength" in schema or "maxLength" in schema:
            words.append(f"{schema.get('minLength', 0)}..{schema.get('maxLength', '')} characters")
        if "pattern" in schema:
            words.append(f"matching <code>{esc(schema['pattern'])}</code>")
    if kind == "array":
        limits = f" ({schema.get('minItems', 0)}..{schema.get('maxItems', '')} items)" \
            if "minItems" in schema or "maxItems" in schema else ""
        return f"array{limits} of {_type_html(schema.get('items', {}))}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict) and not schema.get("properties"):
        return f"object: name &rarr; {_type_html(schema['additionalProperties'])}"
    return " ".join(words)


def _outline_html(schema: Any) -> str:
    """A schema as a list of its fields (required ones in bold), nested objects indented."""
    esc = html.escape
    if not isinstance(schema, dict) or schema.get("type") != "object" or not schema.get("properties"):
        text = _type_html(schema)
        if isinstance(schema, dict) and schema.get("type") == "array" and isinstance(schema.get("items"), dict) \
                and schema["items"].get("properties"):
            text += _outline_html(schema["items"])
        return text + (f" — {esc(schema['description'])}" if isinstance(schema, dict) and "description" in schema
                       else "")
    required = set(schema.get("required", []))
    items = []
    for name, field in schema["properties"].items():
        label = f"<b>{esc(name)}</b>" if name in required else esc(name)
        items.append(f"<li><code>{label}</code>: {_outline_html(field)}</li>")
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        items.append(f"<li><i>any other name</i>: {_outline_html(extra)}</li>")
    closed = " (no other fields)" if extra is False else ""
    rules = "".join(f" {esc(k)}: <code>{esc(json.dumps(schema[k]))}</code>" for k in ("anyOf", "if", "else")
                    if k in schema)
    return f"object{closed}{rules}<ul>{''.join(items)}</ul>"


def _operation_html(path: str, method: str, operation: dict[str, Any], shared: list[dict[str, Any]]) -> str:
    esc = html.escape
    anchor = f"{method}-{path}".replace("/", "-").replace("{", "").replace("}", "")
    parts = [f'<section class="op" id="{esc(anchor)}"><h3><span class="m {method}">{method.upper()}</span> '
             f'<code>{esc(path)}</code> — {esc(operation["summary"])}</h3>']
    if operation.get("description"):
        parts.append(f"<p>{esc(operation['description'])}</p>")
    parts.append("<p class=key>" + ("No key needed." if operation.get("security") == [] else
                                    "Needs the <code>apikey</code> header.") + "</p>")
    params = [*shared, *operation.get("parameters", [])]
    if params:
        rows = "".join(f"<tr><td><code>{esc(p['name'])}</code></td><td>{esc(p['in'])}</td>"
                       f"<td>{'yes' if p.get('required') else 'no'}</td>"
                       f"<td>{_type_html(p['schema'])}</td><td>{esc(p.get('description', ''))}</td>"
                       "</tr>" for p in params)
        parts.append("<h4>Parameters</h4><table><tr><th>name</th><th>in</th><th>required</th><th>schema</th>"
                     f"<th>description</th></tr>{rows}</table>")
    if "requestBody" in operation:
        request = operation["requestBody"]
        parts.append(f"<h4>Request body ({esc(', '.join(request['content']))})</h4>")
        if request.get("description"):
            parts.append(f"<p>{esc(request['description'])}</p>")
        for content in request["content"].values():
            parts.append(f"<div class=schema>{_outline_html(content['schema'])}</div>")
    parts.append("<h4>Responses</h4><table><tr><th>status</th><th>description</th><th>schema</th></tr>")
    for status, response in operation["responses"].items():
        schemas = "".join(_response_schema_html(media, c.get("schema", {}))
                          for media, c in response.get("content", {}).items())
        parts.append(f"<tr><td><b>{esc(status)}</b></td><td>{esc(response['description'])}</td>"
                     f"<td>{schemas}</td></tr>")
    parts.append("</table></section>")
    return "".join(parts)


def _response_schema_html(media: str, schema: dict[str, Any]) -> str:
    """An error response names its codes and links the envelope; a success shows its schema."""
    parts = schema.get("allOf", [])
    if parts and parts[0] == ref("Error"):
        codes = parts[1]["properties"]["error"]["properties"]["code"]["enum"]
        return ('<a href="#schema-Error">error envelope</a>, code: '
                + ", ".join(f"<code>{html.escape(code)}</code>" for code in codes))
    return f"<code>{html.escape(media)}</code>: {_outline_html(schema)}"


STYLE = """body{font:15px/1.45 system-ui,sans-serif;max-width:1100px;margin:auto;padding:1em;color:#222}
code,pre{font:13px ui-monospace,monospace}pre{background:#f5f5f5;padding:.6em;overflow:auto;margin:.3em 0}
table{border-collapse:collapse;width:100%;margin:.3em 0}td,th{border:1px solid #ddd;padding:.3em;
vertical-align:top;text-align:left}.op{border-top:2px solid #ccc;margin-top:1.5em}.m{padding:.1em .4em;
border-radius:3px;color:#fff;font-size:13px}.get{background:#2a7}.post{background:#27c}.put{background:#c82}
.delete{background:#c33}.key{color:#666}nav li{margin:.1em 0}.schema ul{margin:.1em 0;padding-left:1.4em}"""


def render_docs(document: dict[str, Any]) -> str:
    esc = html.escape
    toc, body_parts = [], []
    for path, item in document["paths"].items():
        shared = item.get("parameters", [])
        for method in METHODS:
            if method in item:
                anchor = f"{method}-{path}".replace("/", "-").replace("{", "").replace("}", "")
                toc.append(f'<li><a href="#{esc(anchor)}"><span class="m {method}">{method.upper()}</span> '
                           f"<code>{esc(path)}</code></a> {esc(item[method]['summary'])}</li>")
                body_parts.append(_operation_html(path, method, item[method], shared))
    schema_html = "".join(f'<h3 id="schema-{esc(name)}">{esc(name)}</h3><div class=schema>{_outline_html(schema)}</div>'
                      for name, schema in document["components"]["schemas"].items())
    info = document["info"]
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{esc(info['title'])} API</title>"
            f"<style>{STYLE}</style></head><body><h1>{esc(info['title'])} API {esc(info['version'])}</h1>"
            f"<pre>{esc(info['description'])}</pre><p>The machine-readable document: "
            f'<a href="/openapi.json">/openapi.json</a> (OpenAPI {esc(document["openapi"])}).</p>'
            f"<h2>Routes</h2><nav><ul>{''.join(toc)}</ul></nav>{''.join(body_parts)}"
            f"<h2>Schemas</h2>{schema_html}</body></html>")


@bp.get("/openapi.json")
def openapi_json() -> Response:
    return jsonify(current_app.extensions[DOCUMENT_KEY])


@bp.get("/docs")
def docs() -> Response:
    page = current_app.extensions.get(PAGE_KEY)
    if page is None:  # rendered once per app; two first requests at once both render the same page
        page = current_app.extensions[PAGE_KEY] = render_docs(current_app.extensions[DOCUMENT_KEY])
    return Response(page, content_type="text/html; charset=utf-8")
