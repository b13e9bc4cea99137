"""`autobot keys`: generate the controller keyring from the service matrix, and inspect keyrings and key dirs.

Output names key ids, versions, files, modes and short fingerprints only; key material is never printed.
"""

from __future__ import annotations

import stat
import sys
from pathlib import Path
from typing import NoReturn

import click
import yaml

from autobot.security.keyring import KeyringError, accepted_versions, scan_key_dir
from autobot.security.keyring_file import (
    KeyringFileError,
    plan_keyring,
    read_keyring,
    write_keyring_atomic,
)
from autobot.security.keys import KeyId, fingerprint
from autobot.security.matrix import MATRIX_TOP_KEY

EXIT_ERROR = 2


def _fail(message: str) -> NoReturn:
    click.echo(f"autobot keys: {message}", err=True)
    sys.exit(EXIT_ERROR)


def _matrix_services(path: Path) -> list[str]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise KeyringFileError(f"cannot read matrix file {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise KeyringFileError(f"matrix file {path} is not valid YAML: {exc}") from exc
    services = data.get(MATRIX_TOP_KEY) if isinstance(data, dict) else None
    if not isinstance(services, dict) or not services:
        raise KeyringFileError(f"matrix file {path} has no services under '{MATRIX_TOP_KEY}'")
    return [str(name) for name in services]


@click.group()
def keys() -> None:
    """Service keys: generate the keyring, inspect keyrings and deployed key directories."""


@keys.command()
@click.option(
    "--matrix",
    "matrix_path",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="The service matrix (inventory/group_vars/all/services.yml).",
)
@click.option(
    "--out",
    "out_path",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="The keyring file; its existing keys are reused.",
)
@click.option("--rotate", "rotate", multiple=True, metavar="SERVICE", help="Add version N+1 (keeps N).")
def generate(matrix_path: Path, out_path: Path, rotate: tuple[str, ...]) -> None:
    """Create master keys for every service of the matrix; existing keys are kept, never regenerated."""
    try:
        services = _matrix_services(matrix_path)
        existing = read_keyring(out_path) if out_path.exists() else None
        keyring, changes = plan_keyring(existing, services, rotate=rotate)
        if existing is None or any(change.action in ("new", "rotated", "retired") for change in changes):
            write_keyring_atomic(out_path, keyring)
    except (KeyringFileError, KeyringError, OSError) as exc:
        _fail(str(exc))
    for change in changes:
        click.echo(str(change))


def _mode(path: Path) -> str:
    return f"{stat.S_IMODE(path.stat().st_mode):04o}"


@keys.command()
@click.option(
    "--keyring",
    "keyring_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="A controller keyring file (plaintext).",
)
@click.option(
    "--dir",
    "key_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="A machine's key directory, e.g. /etc/autobot/service-keys.",
)
@click.option("--service", "service_id", help="The service that owns --dir.")
def inspect(keyring_path: Path | None, key_dir: Path | None, service_id: str | None) -> None:
    """Show key ids, versions, files, modes and fingerprints (never key material)."""
    if (keyring_path is None) == (key_dir is None):
        _fail("give exactly one of --keyring FILE or --dir DIR --service ID")
    try:
        if keyring_path is not None:
            _inspect_keyring(keyring_path)
        elif key_dir is not None:
            if not service_id:
                _fail("--dir needs --service ID")
            _inspect_dir(key_dir, service_id)
    except (KeyringFileError, KeyringError, OSError) as exc:
        _fail(str(exc))


def _inspect_keyring(path: Path) -> None:
    keyring = read_keyring(path)
    click.echo(f"keyring {path} mode {_mode(path)}")
    for service, entry in sorted(keyring.services.items()):
        for version in sorted(entry.keys, reverse=True):
            role = "current" if version == entry.current else "previous"
            key_id = KeyId(service, version)
            click.echo(f"  {key_id!s:<28} {role:<9} fingerprint {fingerprint(entry.keys[version])}")


def _inspect_dir(path: Path, service_id: str) -> None:
    files = scan_key_dir(path, service_id)
    masters = [f.key_id.version for f in files if f.kind == "master"]
    current = max(masters, default=None)
    pair_versions: dict[str, list[int]] = {}
    for f in files:
        if f.kind == "pair":
            pair_versions.setdefault(f.key_id.service, []).append(f.key_id.version)
    click.echo(f"key dir {path} (service {service_id}) mode {_mode(path)}")
    for f in files:
        if f.kind == "master":
            role = "signing (current)" if f.key_id.version == current else "master (not used to sign)"
        elif f.key_id.version in accepted_versions(pair_versions[f.key_id.service]):
            role = f"verifies {f.key_id.service} (accepted)"
        else:
            role = f"verifies {f.key_id.service} (REFUSED: older than previous)"
        click.echo(
            f"  {f.path.name:<40} {f.key_id!s:<24} mode {f.mode:04o} fingerprint {fingerprint(f.key)}  {role}"
        )
    if not files:
        click.echo("  (no key files)")
