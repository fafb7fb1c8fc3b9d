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

    duplicates: list[tuple[int, str]]

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.MarkedYAMLError("while composing", None, "aliases (*name) are not allowed "
                                       "in policy files", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        """A LineDict; a repeated key is recorded in self.duplicates and its first value kept,
        so one duplicate does not hide every other problem of the file."""
        self.flatten_mapping(node)
        mapping = LineDict()
        mapping.line = node.start_mark.line + 1
        mapping.key_lines = {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError("while constructing a mapping", node.start_mark,
                                                        "found unhashable key", key_node.start_mark) from None
            line = key_node.start_mark.line + 1
            if key in mapping:
                self.duplicates.append((line, f"duplicate key {key!r}"))
                continue
            mapping[key] = self.construct_object(value_node, deep=True)
            mapping.key_lines[key] = line
        return mapping


_Loader.add_constructor("tag:yaml.org,2002:map", _Loader.construct_mapping)


def parse_yaml(text: str, name: str) -> tuple[Any, str | None]:
    """Return (data, None) or (None, 'name:line: problem') for the first problem."""
    data, problems = parse_yaml_all(text, name)
    return (None, problems[0]) if problems else (data, None)


def parse_yaml_all(text: str, name: str) -> tuple[Any, list[str]]:
    """Return (data, problems): duplicate keys are problems that still leave data (first value
    kept); a syntax error leaves no data."""
    if len(text.encode("utf-8", "replace")) > MAX_POLICY_FILE_BYTES:
        return None, [f"{name}:1: file is larger than {MAX_POLICY_FILE_BYTES} bytes"]
    loader = _Loader(text)
    loader.duplicates = []
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        return None, [f"{name}:{line}: invalid YAML: {exc.problem or exc.context}"]
    except yaml.YAMLError as exc:
        return None, [f"{name}:1: invalid YAML: {exc}"]
    finally:
        loader.dispose()
    return data, [f"{name}:{line}: invalid YAML: {message}" for line, message in loader.duplicates]
