"""The subcommands of `chatauthz` beside serve: check, authorize, export, import (one module each)."""
from __future__ import annotations

from typing import Any


def add_commands(commands: Any) -> None:
    """Register each subcommand on the CLI's subparsers; each sets `run(args) -> exit code`."""
    from sidecar.commands import authorize, check, export, importer
    for module in (check, authorize, export, importer):
        module.add_parser(commands)
