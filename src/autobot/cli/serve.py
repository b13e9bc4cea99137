"""`autobot serve SERVICE --config FILE`: run one service from its deployed ASGI entry file.

The entry file (config.asgi_entry), not this command, decides which service-auth middleware wraps the app:
the deployment renders it for the logging or the enforcement phase. This command never chooses a phase,
so there is no flag or variable that could switch enforcement off.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, get_args

import click

from autobot.config import ConfigError, ServiceConfig, load_config

SERVICE_IDS: tuple[str, ...] = get_args(ServiceConfig.model_fields["service_id"].annotation)
EXIT_BAD_CONFIG = 2
# sd_listen_fds(3): systemd passes the sockets of a .socket unit from file descriptor 3 on.
SD_LISTEN_FDS_START = 3


class EntryError(Exception):
    """The ASGI entry file is missing, fails to import, or defines no `app`."""


def check_service(config: ServiceConfig, service: str, config_path: Path) -> Path:
    """Return the entry file path, or raise ConfigError when the config does not fit this service."""
    if config.service_id != service:
        raise ConfigError(f"config file {config_path} is for service {config.service_id!r}, not {service!r}")
    if config.asgi_entry is None:
        raise ConfigError(
            f"config file {config_path} names no asgi_entry: the deployed entry file decides the "
            "service-auth phase, so the service cannot start without one"
        )
    return config.asgi_entry


def load_entry_app(entry: Path, service: str) -> Any:
    """Import the entry file from its path (it is not on sys.path) and return its `app`."""
    if not entry.is_file():
        raise EntryError(f"ASGI entry file {entry} does not exist (was the service-auth phase deployed?)")
    module_name = f"autobot_entry_{service.replace('-', '_')}"
    spec = importlib.util.spec_from_file_location(module_name, entry)
    if spec is None or spec.loader is None:
        raise EntryError(f"ASGI entry file {entry} cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    # Registered before exec so dataclasses/pickling inside the entry file can find their module.
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise EntryError(f"ASGI entry file {entry} failed to import: {type(exc).__name__}: {exc}") from exc
    app = getattr(module, "app", None)
    if app is None or not callable(app):
        raise EntryError(f"ASGI entry file {entry} defines no callable `app`")
    return app


def configure_logging(level: str) -> None:
    """The service's own loggers (autobot.*) log at the config's level to stderr, as uvicorn's do."""
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


def systemd_listen_fd(environ: MutableMapping[str, str], pid: int) -> int | None:
    """The listening socket a systemd .socket unit passed to this process, as sd_listen_fds(3) defines it.

    The deployed units use socket activation: systemd holds the port, so a restart queues connections in the
    backlog instead of refusing them. The variables are removed once read (they are meant for this process
    only, not for anything it starts). Without them (a service started by hand) it binds its own port.
    """
    fds, owner = environ.get("LISTEN_FDS"), environ.get("LISTEN_PID")
    if fds is None or owner is None:
        return None
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        environ.pop(name, None)
    if not (owner.isdigit() and int(owner) == pid and fds.isdigit() and int(fds) >= 1):
        return None
    if int(fds) > 1:
        raise ConfigError(f"systemd passed {fds} sockets; the service listens on exactly one")
    return SD_LISTEN_FDS_START


def run_server(app: Any, config: ServiceConfig, *, access_log: bool, fd: int | None = None) -> None:
    import uvicorn  # imported here so `autobot serve --help` stays fast

    from autobot.client.service_client import CALLEE_KEEPALIVE_S
    from autobot.services.http.bounded_head import bounded_head_protocol

    where: dict[str, Any] = (
        {"fd": fd} if fd is not None else {"host": config.listen.host, "port": config.listen.port}
    )
    server_config = uvicorn.Config(
        app,
        **where,
        # The services sit on a private network without a proxy in front: forwarded headers are never trusted.
        proxy_headers=False,
        access_log=access_log,
        log_level=config.log_level,
        server_header=False,
        lifespan="on",
        # Idle connections close after this; callers expire theirs earlier (see the constant's comment).
        timeout_keep_alive=CALLEE_KEEPALIVE_S,
        timeout_graceful_shutdown=max(1, round(config.listen.graceful_shutdown_s)),
        http=bounded_head_protocol(config.listen.max_request_head_bytes),
    )
    uvicorn.Server(server_config).run()


@click.command()
@click.argument("service", type=click.Choice(SERVICE_IDS))
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="The service's config.yml (as rendered to /etc/autobot/<service>/config.yml).",
)
@click.option("--access-log/--no-access-log", default=False, show_default=True, help="Log every request.")
def serve(service: str, config_path: Path, access_log: bool) -> None:
    """Run SERVICE with uvicorn from the ASGI entry file its config names."""
    try:
        fd = systemd_listen_fd(os.environ, os.getpid())
        config = load_config(config_path)
        entry = check_service(config, service, config_path)
        configure_logging(config.log_level)
        app = load_entry_app(entry, service)
    except (ConfigError, EntryError) as exc:
        click.echo(f"autobot serve: {exc}", err=True)
        sys.exit(EXIT_BAD_CONFIG)
    run_server(app, config, access_log=access_log, fd=fd)
