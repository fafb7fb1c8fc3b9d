"""Reads policies/ and model.conf into a validated PolicySet, reporting every problem at once."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import casbin

from sidecar.errors import PolicyError
from sidecar.policy.types import ARRAY_TYPES, VALUE_TYPES, Action, Feature, PermissionDef, PolicySet, RoleDef, ScopeDef
from sidecar.policy.values import normalize_value
from sidecar.policy.yamlio import LineDict, parse_yaml_all

POLICY_FILES = ("catalogue.yaml", "roles.yaml", "scopes.yaml")
SCOPE_NAMES = ("admin", "moderator", "participant")
ID_PATTERN = re.compile(r"[a-z0-9_-]{1,100}")
FACT_PATTERN = re.compile(r"context\.[A-Za-z][A-Za-z0-9_]*|target\.role|target\.scope")
MODEL_TOKENS = {"r": ["layer", "sub", "dom", "obj"],
                "p": ["priority", "layer", "sub", "dom", "obj", "eft", "source"]}
KEY_FIELDS = {"type", "title", "values", "default", "fact", "when", "target"}
ROLE_SETTINGS = {"listUsers": ("all", "friendsOnly"), "sendMessagesTo": ("all", "friendsOnly")}  # as the API's


def load_policy(policy_dir: Path | str, model_path: Path | str | None = None) -> PolicySet:
    """Load policy_dir/*.yaml and model.conf (default: policy_dir/../model.conf)."""
    policy_dir = Path(policy_dir)
    model = Path(model_path) if model_path else policy_dir.parent / "model.conf"
    texts: dict[str, str] = {}
    problems: list[str] = []
    for name in POLICY_FILES:
        try:
            texts[name] = (policy_dir / name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{name}:1: cannot read {policy_dir / name}: {exc}")
    try:
        model_text = model.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"model.conf:1: cannot read {model}: {exc}")
        model_text = ""
    if problems:
        raise PolicyError(problems)
    return load_policy_texts(texts, model_text)


def load_policy_texts(texts: dict[str, str], model_text: str) -> PolicySet:
    """Build a PolicySet from file name -> text; raise PolicyError listing every problem."""
    return _Builder(texts, model_text).build()


class _Builder:
    def __init__(self, texts: dict[str, str], model_text: str) -> None:
        self.texts = texts
        self.model_text = model_text
        self.problems: list[str] = []
        self.key_lines: dict[tuple[str, str], int] = {}

    def problem(self, file: str, line: int, message: str) -> None:
        self.problems.append(f"{file}:{line}: {message}")

    def build(self) -> PolicySet:
        docs = {name: self._document(name) for name in POLICY_FILES}
        self._check_model()
        role_keys = self._keys(docs["catalogue.yaml"], "roleKeys", "role")
        scope_keys = self._keys(docs["catalogue.yaml"], "scopeKeys", "scope")
        actions = self._actions(docs["catalogue.yaml"], role_keys, scope_keys)
        features = self._features(docs["catalogue.yaml"], actions)
        role_ids = _role_ids(docs["roles.yaml"])
        scopes = self._scopes(docs["scopes.yaml"], scope_keys, role_ids)
        roles = self._roles(docs["roles.yaml"], role_keys, features)
        self._check_role_defaults({**role_keys, **scope_keys}, role_ids)
        if self.problems:
            raise PolicyError(self.problems)
        digest = hashlib.sha256()
        for name in (*POLICY_FILES, "model.conf"):
            digest.update(name.encode() + b"\0" + self.texts.get(name, self.model_text).encode() + b"\0")
        return PolicySet(role_keys, scope_keys, features, actions, roles, scopes,
                         self.model_text, digest.hexdigest()[:16])

    # -- documents -------------------------------------------------------------------------
    def _document(self, name: str) -> LineDict:
        if name not in self.texts:
            self.problem(name, 1, "file is missing")
            return _empty()
        data, errors = parse_yaml_all(self.texts[name], name)
        self.problems += errors
        if data is None and errors:
            return _empty()
        if not isinstance(data, LineDict):
            self.problem(name, 1, "the file must be a YAML mapping")
            return _empty()
        if data.get("version") != 1:
            self.problem(name, data.line_of("version"), "version must be 1")
        return data

    def _section(self, doc: LineDict, file: str, name: str, allowed: set[str]) -> LineDict:
        for key in doc:
            if key not in allowed | {"version"}:
                self.problem(file, doc.line_of(key), f"unknown top-level key {key!r}")
        value = doc.get(name)
        if value is None:
            if doc:  # an unreadable file already has its problem
                self.problem(file, doc.line, f"{name} is missing")
            return _empty()
        if not isinstance(value, LineDict):
            self.problem(file, doc.line_of(name), f"{name} must be a mapping")
            return _empty()
        return value

    def _check_model(self) -> None:
        try:
            model = casbin.Enforcer.new_model(text=self.model_text)
        except Exception as exc:  # casbin raises plain exceptions for syntax errors
            self.problem("model.conf", 1, f"invalid Casbin model: {exc}")
            return
        for sec, tokens in MODEL_TOKENS.items():
            got = model.model.get(sec, {}).get(sec)
            if got is None or [t.split("_", 1)[1] for t in got.tokens] != tokens:
                self.problem("model.conf", 1, f"{sec} must be defined as "
                             f"{sec} = {', '.join(tokens)}")
        if "m" not in model.model or "e" not in model.model:
            self.problem("model.conf", 1, "the model needs [policy_effect] and [matchers]")

    # -- catalogue -------------------------------------------------------------------------
    def _keys(self, doc: LineDict, section: str, layer: str) -> dict[str, PermissionDef]:
        file = "catalogue.yaml"
        entries = self._section(doc, file, section, {"roleKeys", "scopeKeys", "extraActions", "features"})
        keys: dict[str, PermissionDef] = {}
        for key, spec in entries.items():
            line = entries.line_of(key)
            if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z]+(\.[A-Za-z]+)?", key):
                self.problem(file, line, f"{section}: invalid key name {key!r}")
                continue
            if not isinstance(spec, LineDict):
                self.problem(file, line, f"{key}: must be a mapping with at least a type")
                continue
            defn = self._key(file, key, layer, spec)
            if defn:
                keys[key] = defn
        self.key_lines.update({(layer, k): entries.line_of(k) for k in keys})
        return keys

    def _key(self, file: str, key: str, layer: str, spec: LineDict) -> PermissionDef | None:
        for field_name in spec:
            if field_name not in KEY_FIELDS:
                self.problem(file, spec.line_of(field_name), f"{key}: unknown field {field_name!r}")
        kind = spec.get("type")
        if kind not in VALUE_TYPES:
            self.problem(file, spec.line_of("type"), f"{key}: type must be one of {', '.join(VALUE_TYPES)}")
            return None
        values = spec.get("values")
        if kind == "stringArray" and not (isinstance(values, list) and values
                                          and all(isinstance(v, str) for v in values)):
            self.problem(file, spec.line_of("values"), f"{key}: a stringArray needs a list of values")
            values = None
        elif kind != "stringArray" and values is not None:
            self.problem(file, spec.line_of("values"), f"{key}: only a stringArray takes values")
        for item in _repeated(values if kind == "stringArray" and values else []):
            self.problem(file, spec.line_of("values"), f"{key}: values lists {item!r} more than once")
        fact = spec.get("fact")
        if fact is not None and not (isinstance(fact, str) and FACT_PATTERN.fullmatch(fact)):
            self.problem(file, spec.line_of("fact"), f"{key}: fact must be context.<name>, "
                         "target.role or target.scope")
        if "." in key and fact is None:
            self.problem(file, spec.line_of("type"), f"{key}: a constraint key needs a fact")
        self._check_target_facts(file, key, layer, spec, values if kind == "stringArray" else None)
        when = self._when(file, key, spec)
        target = spec.get("target")
        if target not in (None, "required"):
            self.problem(file, spec.line_of("target"), f"{key}: target may only be 'required'")
        elif target is not None and (layer != "scope" or "." in key):
            self.problem(file, spec.line_of("target"), f"{key}: only an action key of scopeKeys takes "
                         "target (the member acted on is known in a group only)")
        default = spec.get("default", "allow" if kind == "allowDeny" else "all" if kind == "mode" else None)
        title = spec.get("title", key)
        if not isinstance(title, str) or len(title) > 255:
            self.problem(file, spec.line_of("title"), f"{key}: title must be a string of at most 255 characters")
        defn = PermissionDef(key, layer, kind, default, str(title),
                             tuple(values) if values else None, fact, when, target == "required")
        try:
            defn = PermissionDef(key, layer, kind, normalize_value(defn, default), str(title),
                                 defn.values, fact, when, target == "required")
        except ValueError as exc:
            self.problem(file, spec.line_of("default"), f"default: {exc}")
        # A key with a problem still counts as defined (its problem is reported): dropping it would
        # add "unknown action/key" echoes of the same mistake wherever it is used.
        return defn

    def _when(self, file: str, key: str, spec: LineDict) -> dict[str, tuple[str, ...]]:
        when = spec.get("when")
        if when is None:
            return {}
        if not isinstance(when, dict) or not all(
                isinstance(f, str) and FACT_PATTERN.fullmatch(f) and isinstance(v, list)
                and all(isinstance(i, str) for i in v) for f, v in when.items()):
            self.problem(file, spec.line_of("when"), f"{key}: when must map facts to lists of values")
            return {}
        return {fact: tuple(values) for fact, values in when.items()}

    def _actions(self, doc: LineDict, role_keys: dict[str, PermissionDef],
                 scope_keys: dict[str, PermissionDef]) -> dict[str, Action]:
        extra = doc.get("extraActions") or []
        if not isinstance(extra, list) or not all(isinstance(a, str) and re.fullmatch(r"[A-Za-z]+", a)
                                                  for a in extra):
            self.problem("catalogue.yaml", doc.line_of("extraActions"), "extraActions must be a list of names")
            extra = []
        names = [k for k, d in {**role_keys, **scope_keys}.items() if d.is_action]
        for defn in (*role_keys.values(), *scope_keys.values()):
            if not defn.is_action and defn.action not in names:
                self.problem("catalogue.yaml", self.key_lines[(defn.layer, defn.key)],
                             f"{defn.key}: constrains {defn.action!r}, which is not an action")
        for name in _repeated(extra):
            self.problem("catalogue.yaml", doc.line_of("extraActions"), f"extraActions: {name} is listed more than once")
        for name in extra:
            if name in names:
                self.problem("catalogue.yaml", doc.line_of("extraActions"),
                             f"extraActions: {name} is already a permission key")
        actions: dict[str, Action] = {}
        for name in dict.fromkeys(names + list(extra)):
            scope_def = scope_keys.get(name)
            actions[name] = Action(
                name, name in role_keys, scope_def is not None,
                bool(scope_def and scope_def.target_required),
                tuple(d for d in role_keys.values() if not d.is_action and d.action == name),
                tuple(d for d in scope_keys.values() if not d.is_action and d.action == name))
        return actions

    def _features(self, doc: LineDict, actions: dict[str, Action]) -> dict[str, Feature]:
        file = "catalogue.yaml"
        entries = doc.get("features")
        if not isinstance(entries, LineDict):
            self.problem(file, doc.line_of("features"), "features must be a mapping")
            return {}
        features: dict[str, Feature] = {}
        for key, spec in entries.items():
            line = entries.line_of(key)
            if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z]+", key):
                self.problem(file, line, f"features: invalid feature key {key!r} (write it without u.)")
                continue
            if not isinstance(spec, LineDict) or not isinstance(spec.get("actions"), list) or not spec["actions"]:
                self.problem(file, line, f"feature {key}: needs a non-empty list of actions")
                continue
            for extra_field in set(spec) - {"actions", "title"}:
                self.problem(file, spec.line_of(extra_field), f"feature {key}: unknown field {extra_field!r}")
            if not all(isinstance(a, str) for a in spec["actions"]):
                self.problem(file, spec.line_of("actions"), f"feature {key}: actions must be a list of action names")
                continue
            for action in spec["actions"]:
                if action not in actions:
                    self.problem(file, spec.line_of("actions"), f"feature {key}: unknown action {action!r}")
            for action in _repeated(spec["actions"]):
                self.problem(file, spec.line_of("actions"), f"feature {key}: action {action!r} is listed more than once")
            title = spec.get("title", key)
            if not isinstance(title, str) or len(title) > 255:
                self.problem(file, spec.line_of("title"), f"feature {key}: title must be a string of at most 255 characters")
            features[key] = Feature(key, tuple(spec["actions"]), str(title))
        return features

    # -- scopes and roles ------------------------------------------------------------------
    def _permissions(self, file: str, owner: str, spec: LineDict, keys: dict[str, PermissionDef],
                     known_roles: set[str] | None) -> dict[str, Any]:
        perms = spec.get("permissions") or LineDict()
        if not isinstance(perms, dict):
            self.problem(file, spec.line_of("permissions"), f"{owner}: permissions must be a mapping")
            return {}
        result: dict[str, Any] = {}
        for key, value in perms.items():
            line = perms.line_of(key) if isinstance(perms, LineDict) else spec.line
            if key not in keys:
                self.problem(file, line, f"{owner}: unknown permission key {key!r}")
                continue
            try:
                result[key] = normalize_value(keys[key], value, known_roles)
            except ValueError as exc:
                self.problem(file, line, f"{owner}: {exc}")
        return result

    def _scopes(self, doc: LineDict, scope_keys: dict[str, PermissionDef], role_ids: set[str]) -> dict[str, ScopeDef]:
        file = "scopes.yaml"
        entries = self._section(doc, file, "scopes", {"scopes"})
        scopes: dict[str, ScopeDef] = {}
        for name, spec in entries.items():
            line = entries.line_of(name)
            if name not in SCOPE_NAMES:
                self.problem(file, line, f"unknown scope {name!r}; scopes are {', '.join(SCOPE_NAMES)}")
                continue
            if not isinstance(spec, LineDict):
                self.problem(file, line, f"scope {name}: must be a mapping")
                continue
            for extra_field in set(spec) - {"rank", "description", "permissions"}:
                self.problem(file, spec.line_of(extra_field), f"scope {name}: unknown field {extra_field!r}")
            rank = spec.get("rank")
            if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= 100:
                self.problem(file, spec.line_of("rank"), f"scope {name}: rank must be an integer 1-100")
                rank = 0
            description = spec.get("description", "")
            if not isinstance(description, str) or len(description) > 255:
                self.problem(file, spec.line_of("description"), f"scope {name}: description must be a string of "
                             "at most 255 characters")
            perms = self._permissions(file, f"scope {name}", spec, scope_keys, role_ids)
            scopes[name] = ScopeDef(name, rank, str(spec.get("description", "")), perms, f"{file}:{line}")
        for name in SCOPE_NAMES:
            if name not in scopes and entries:
                self.problem(file, entries.line, f"scope {name} is missing")
        if len(scopes) == len(SCOPE_NAMES) and all(s.rank for s in scopes.values()) and not (
                scopes["admin"].rank > scopes["moderator"].rank > scopes["participant"].rank):
            self.problem(file, entries.line, "ranks must order admin > moderator > participant")
        return scopes

    def _roles(self, doc: LineDict, role_keys: dict[str, PermissionDef],
               features: dict[str, Feature]) -> dict[str, RoleDef]:
        file = "roles.yaml"
        entries = self._section(doc, file, "roles", {"roles"})
        known = {r for r in entries if isinstance(r, str)} | {"default"}
        roles: dict[str, RoleDef] = {}
        for role, spec in entries.items():
            line = entries.line_of(role)
            if isinstance(role, str) and role != role.lower() and role.lower() in known:
                # "A role that can never be assigned": ids are forced to lowercase when a user is
                # given a role (spec: role id), so assigning 'Support' gives the role 'support'.
                # Every other malformed id is caught by ID_PATTERN below; any well-formed id is
                # assignable (PUT /users/{uid} accepts every role the files define).
                self.problem(file, line, f"role {role!r} can never be assigned: role ids are lowercased "
                             f"on assignment, which gives the role {role.lower()!r} "
                             f"(line {entries.line_of(role.lower())})")
                continue
            if not isinstance(role, str) or not ID_PATTERN.fullmatch(role):
                self.problem(file, line, f"role id {role!r} must be 1-100 characters of a-z, 0-9, - and _")
                continue
            if not isinstance(spec, LineDict):
                self.problem(file, line, f"role {role}: must be a mapping")
                continue
            roles[role] = self._role(file, role, spec, role_keys, features, known)
        if "default" not in roles:
            roles["default"] = RoleDef("default", "Default Role", source="built-in")
        return roles

    def _role(self, file: str, role: str, spec: LineDict, role_keys: dict[str, PermissionDef],
              features: dict[str, Feature], known: set[str]) -> RoleDef:
        allowed_fields = {"name", "description", "metadata", "settings", "permissions", "restrictedFeatures"}
        for extra_field in set(spec) - allowed_fields:
            self.problem(file, spec.line_of(extra_field), f"role {role}: unknown field {extra_field!r}")
        name = spec.get("name")
        if not isinstance(name, str) or not 1 <= len(name) <= 100:
            self.problem(file, spec.line_of("name"), f"role {role}: name must be a string of 1-100 characters")
        description = spec.get("description")
        if description is not None and (not isinstance(description, str) or len(description) > 255):
            self.problem(file, spec.line_of("description"), f"role {role}: description must be at most 255 characters")
        for field_name in ("metadata", "settings"):
            if spec.get(field_name) is not None and not isinstance(spec.get(field_name), dict):
                self.problem(file, spec.line_of(field_name), f"role {role}: {field_name} must be a mapping")
        self._check_settings(file, role, spec.get("settings"))
        restricted = spec.get("restrictedFeatures") or []
        keys: set[str] = set()
        if not isinstance(restricted, list) or not all(isinstance(f, str) for f in restricted):
            self.problem(file, spec.line_of("restrictedFeatures"), f"role {role}: restrictedFeatures must be a list "
                         "of feature keys")
            restricted = []
        for feature in _repeated([f.removeprefix("u.") for f in restricted]):
            self.problem(file, spec.line_of("restrictedFeatures"), f"role {role}: feature 'u.{feature}' is "
                         "listed more than once")
        for feature in restricted:
            bare = feature[2:] if isinstance(feature, str) and feature.startswith("u.") else feature
            if bare not in features:
                self.problem(file, spec.line_of("restrictedFeatures"), f"role {role}: unknown feature {feature!r}")
            else:
                keys.add(bare)
        if keys and role == "default":
            self.problem(file, spec.line_of("restrictedFeatures"), "role default: default cannot be restricted")
        perms = self._permissions(file, f"role {role}", spec, role_keys, known)
        return RoleDef(role, str(name), description, _plain(spec.get("metadata")), _plain(spec.get("settings")),
                       perms, frozenset(keys), f"{file}:{spec.line}")

    # -- cross-checks ----------------------------------------------------------------------
    def _check_target_facts(self, file: str, key: str, layer: str, spec: LineDict,
                            values: Any) -> None:
        """target.scope is a scope of the group: only scopeKeys can see it, and its vocabulary
        must name scopes that exist."""
        if spec.get("fact") != "target.scope":
            return
        if layer != "scope":
            self.problem(file, spec.line_of("fact"), f"{key}: target.scope is known in a group only; "
                         "use it in scopeKeys")
        for value in values if isinstance(values, list) else []:
            if value not in SCOPE_NAMES:
                self.problem(file, spec.line_of("values"), f"{key}: {value!r} is not a scope; "
                             f"scopes are {', '.join(SCOPE_NAMES)}")

    def _check_settings(self, file: str, role: str, settings: Any) -> None:
        if not isinstance(settings, LineDict):
            return
        for name, value in settings.items():
            if name not in ROLE_SETTINGS:
                self.problem(file, settings.line_of(name), f"role {role}: unknown setting {name!r}; "
                             f"settings are {', '.join(ROLE_SETTINGS)}")
            elif value not in ROLE_SETTINGS[name]:
                self.problem(file, settings.line_of(name), f"role {role}: settings.{name} must be one of "
                             f"{', '.join(ROLE_SETTINGS[name])}; got {value!r}")

    def _check_role_defaults(self, keys: dict[str, PermissionDef], role_ids: set[str]) -> None:
        """A catalogue default of a rolesStringArray must name roles that exist."""
        for defn in keys.values():
            if defn.type == "rolesStringArray" and isinstance(defn.default, list):
                for role in defn.default:
                    if isinstance(role, str) and role not in role_ids | {"default"}:
                        self.problem("catalogue.yaml", self.key_lines[(defn.layer, defn.key)],
                                     f"{defn.key}: default names role {role!r}, which does not exist")


def _role_ids(doc: LineDict) -> set[str]:
    roles = doc.get("roles")
    return {r for r in roles if isinstance(r, str)} | {"default"} if isinstance(roles, dict) else {"default"}


def _repeated(items: list[Any]) -> list[Any]:
    """Items that occur more than once (each once, in order)."""
    seen: list[Any] = []
    repeated: list[Any] = []
    for item in items:
        if item in seen and item not in repeated:
            repeated.append(item)
        seen.append(item)
    return repeated


def _empty() -> LineDict:
    empty = LineDict()
    empty.line, empty.key_lines = 1, {}
    return empty


def _plain(value: Any) -> Any:
    """Strip LineDict to plain dicts (for JSON and equality)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


assert ARRAY_TYPES  # re-exported for callers that check array types alongside loading
