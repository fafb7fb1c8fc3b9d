"""The policy-as-code subcommands of `chatauthz`: check, authorize, export (one module each)."""
from __future__ import annotations

from typing import Any


def add_commands(commands: Any) -> None:
    """Register each subcommand on the CLI's subparsers; each sets `run(args) -> exit code`."""
    from sidecar.commands import authorize, check, export
    for module in (check, authorize, export):
        module.add_parser(commands)
