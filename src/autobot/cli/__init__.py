"""The `autobot` command. Each sub-command lives in its own module and is imported only when used,
so `autobot db init` does not pay for importing FastAPI or the security stack."""

from __future__ import annotations

import importlib
from typing import Any

import click

# name -> "module:attribute"; each attribute is a click command or group.
_COMMANDS: dict[str, str] = {
    "audit": "autobot.cli.audit:audit",
    "config": "autobot.cli.config:config",
    "db": "autobot.cli.db:db",
    "keys": "autobot.cli.keys:keys",
    "ops": "autobot.cli.ops:ops",
    "serve": "autobot.cli.serve:serve",
    "sessions": "autobot.cli.sessions:sessions",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = _COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        command: Any = getattr(importlib.import_module(module_name), attr)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=_LazyGroup)
@click.version_option(package_name="autobot")
def main() -> None:
    """Operate the AutoBot services: database, service keys, serving, conversations, the cluster."""
