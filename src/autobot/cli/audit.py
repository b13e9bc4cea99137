"""`autobot audit summary`: count a service's audit decisions since a time (the rollout gate's input)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import click

from autobot.security.audit_summary import log_lines, parse_time, summarise
from autobot.security.matrix import Matrix, MatrixError


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
@click.option(
    "--since",
    "since",
    multiple=True,
    help="ISO 8601 time; lines before it are left out (default: all). Given more than once, the latest"
    " counts: the gate passes the phase's start and an operator's fresh window, and looks before neither.",
)
@click.option(
    "--matrix",
    "matrix_path",
    default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The service matrix (matrix.yml beside the config): count paths under their route patterns.",
)
def summary(log_path: Path, since: tuple[str, ...], matrix_path: Path | None) -> None:
    """Print, as JSON, how many requests each caller made to each route and what was decided."""
    start = datetime.min.replace(tzinfo=UTC)
    for value in since:
        try:
            moment = parse_time(value)
        except ValueError:
            raise click.BadParameter(f"not an ISO 8601 time: {value!r}", param_hint="--since") from None
        if moment.tzinfo is None:
            raise click.BadParameter("give a time zone (e.g. a trailing Z)", param_hint="--since")
        start = max(start, moment)
    matrices = None
    if matrix_path is not None:
        try:
            matrices = Matrix.load_all(matrix_path)
        except MatrixError as exc:
            raise click.BadParameter(str(exc), param_hint="--matrix") from None
    summary = summarise(log_lines(log_path), start, matrices)
    click.echo(json.dumps(summary.to_dict(), separators=(",", ":")))
