"""Safe YAML parsing that remembers each mapping key's line, and refuses aliases and huge files."""
from __future__ import annotations

from typing import Any

import yaml

MAX_POLICY_FILE_BYTES = 2 * 1024 * 1024


class LineDict(dict):  # type: ignore[type-arg]
    """A dict that knows the 1-based line of each of its keys (and its own, as `line`)."""

    line: int = 0
    key_lines: dict[Any, int]

    def line_of(self, key: Any) -> int:
        return self.key_lines.get(key, self.line)


class _Loader(yaml.SafeLoader):
    """yaml.SafeLoader that records lines and refuses aliases (no alias bombs)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.MarkedYAMLError("while composing", None, "aliases (*name) are not allowed "
                                       "in policy files", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        mapping = LineDict(super().construct_mapping(node, deep=True))
        mapping.line = node.start_mark.line + 1
        mapping.key_lines = {}
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) or key is None:
                if key in seen:
                    raise yaml.MarkedYAMLError("while constructing a mapping", node.start_mark,
                                               f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
                mapping.key_lines[key] = key_node.start_mark.line + 1
        return mapping


_Loader.add_constructor("tag:yaml.org,2002:map", _Loader.construct_mapping)


def parse_yaml(text: str, name: str) -> tuple[Any, str | None]:
    """Return (data, None) or (None, 'name:line: problem')."""
    if len(text.encode("utf-8", "replace")) > MAX_POLICY_FILE_BYTES:
        return None, f"{name}:1: file is larger than {MAX_POLICY_FILE_BYTES} bytes"
    try:
        return yaml.load(text, Loader=_Loader), None  # noqa: S506 - _Loader is a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        return None, f"{name}:{line}: invalid YAML: {exc.problem or exc.context}"
    except yaml.YAMLError as exc:
        return None, f"{name}:1: invalid YAML: {exc}"
