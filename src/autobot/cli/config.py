"""`autobot config check FILE`: validate a service configuration with the model the service itself loads.

The deployment renders each machine's config.yml on the controller and runs this on it before anything changes
on the machine, so a config the service would refuse never reaches it.
"""

from __future__ import annotations

from pathlib import Path

import click

from autobot.config import ConfigError, load_config

EXIT_INVALID = 2


@click.group()
def config() -> None:
    """Check service configuration files."""


@config.command("check")
@click.argument("config_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--service", "service", default=None, help="Also require the file to be this service's config.")
def check(config_path: Path, service: str | None) -> None:
    """Validate CONFIG_PATH; exit 2 with the reason when the service would refuse it."""
    try:
        loaded = load_config(config_path)
    except ConfigError as exc:
        click.echo(f"autobot config check: {exc}", err=True)
        raise SystemExit(EXIT_INVALID) from None
    if service is not None and loaded.service_id != service:
        click.echo(
            f"autobot config check: {config_path} is for service {loaded.service_id!r}, not {service!r}",
            err=True,
        )
        raise SystemExit(EXIT_INVALID)
    click.echo(f"{config_path}: valid {loaded.service_id} configuration")
