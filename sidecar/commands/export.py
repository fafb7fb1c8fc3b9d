"""`chatauthz export`: the runtime state's roles and group overrides as YAML, for git.

Writes a drop-in roles.yaml (every role with its effective values) to -o FILE or stdout, and
the per-group scope overrides as a second YAML document: to --overrides FILE, else next to
-o FILE as <name>.group-overrides.yaml, else after `---` on stdout.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from sidecar.commands.common import (
    EXIT_USAGE,
    CommandError,
    add_policy_options,
    add_store_options,
    policy_of,
    redis_flags,
    report_error,
    settings_from,
    state_of,
)
from sidecar.export import group_overrides_yaml, roles_yaml


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("export", help="write the runtime roles and overrides as policy YAML",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", help="write the roles file here (default stdout)")
    parser.add_argument("--overrides", help="write the group overrides here "
                        "(default <output>.group-overrides.yaml, or stdout)")
    add_store_options(parser, world=False)
    add_policy_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from(data_dir=args.data_dir, policies=args.policies, model=args.model,
                                 **redis_flags(args))
        policy = policy_of(settings)
        state, origin = state_of(settings)
        roles, overrides = roles_yaml(policy, state, origin), group_overrides_yaml(state, origin)
        if args.output is None and args.overrides is None:
            sys.stdout.write(roles + "---\n" + overrides)
            return 0
        roles_path = Path(args.output) if args.output else None
        overrides_path = Path(args.overrides) if args.overrides else _beside(roles_path)
        if roles_path is None:
            sys.stdout.write(roles)
        else:
            _write(roles_path, roles)
        _write(overrides_path, overrides)
    except CommandError as error:
        return report_error(error)
    print(f"chatauthz export: roles to {roles_path or 'stdout'}, group overrides to {overrides_path} "
          f"(revision {state.revision})", file=sys.stderr)
    return 0


def _beside(path: Path | None) -> Path:
    assert path is not None
    stem = path.name[:-5] if path.name.endswith(".yaml") else path.name
    return path.with_name(f"{stem}.group-overrides.yaml")


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise CommandError(EXIT_USAGE, f"chatauthz export: cannot write {path}: {exc}") from exc
