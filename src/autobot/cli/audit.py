"""`autobot audit summary`: count a service's audit decisions since a time (the rollout gate's input)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import click

from autobot.security.audit_summary import log_lines, parse_time, summarise


@click.group()
def audit() -> None:
    """Read the service-auth audit log."""


@audit.command("summary")
@click.option(
    "--log",
    "log_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The audit log (security.audit_log of the service's config).",
)
@click.option("--since", default=None, help="ISO 8601 time; lines before it are left out (default: all).")
def summary(log_path: Path, since: str | None) -> None:
    """Print, as JSON, how many requests each caller made to each route and what was decided."""
    try:
        start = parse_time(since) if since else datetime.min.replace(tzinfo=UTC)
    except ValueError:
        raise click.BadParameter(f"not an ISO 8601 time: {since!r}", param_hint="--since") from None
    if start.tzinfo is None:
        raise click.BadParameter("give a time zone (e.g. a trailing Z)", param_hint="--since")
    click.echo(json.dumps(summarise(log_lines(log_path), start).to_dict(), separators=(",", ":")))
