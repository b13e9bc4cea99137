"""Helpers for the service-auth tests: key dirs laid out as deployed, signed raw requests, a real HTTP server.

Imported as `tests.security.auth_support` from every test layer.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from tests.support.http_server import bound_socket, serving  # noqa: F401

from autobot.security.keyring import Keyring, master_file_name, pair_file_name
from autobot.security.keyring_file import ControllerKeyring, plan_keyring
from autobot.security.keys import derive_pair_key
from autobot.security.signing import sign_request
from autobot.security.verify import RawRequest

ROOT = Path(__file__).resolve().parents[2]
MATRIX_FILE = ROOT / "inventory" / "group_vars" / "all" / "services.yml"
TEMPLATE = ROOT / "templates" / "asgi_entry.py.j2"
LOOPBACK = "127.0.0.1"
# The fields of one audit line, as docs/architecture.md ("Audit") lists them.
AUDIT_FIELDS = frozenset(
    {
        "time",
        "callee",
        "caller",
        "keyid",
        "method",
        "path",
        "decision",
        "status",
        "reason",
        "phase",
        "route_kind",
    }
)


def load_services() -> dict[str, Any]:
    data = yaml.safe_load(MATRIX_FILE.read_text(encoding="utf-8"))
    services: dict[str, Any] = data["autobot_services"]
    return services


def controller_keyring(
    rotate: tuple[str, ...] = (), base: ControllerKeyring | None = None
) -> ControllerKeyring:
    keyring, _ = plan_keyring(base, load_services(), rotate=rotate)
    return keyring


def _write(path: Path, key: bytes) -> None:
    path.write_text(key.hex() + "\n", encoding="ascii")
    os.chmod(path, 0o640)


def write_key_dir(directory: Path, service: str, keyring: ControllerKeyring) -> Path:
    """Lay out `service`'s key files: every master version the keyring holds (the deployment ships only the
    current one; the loader must cope with more), and the pair keys of its callers."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o750)
    for old in directory.glob("*.key"):
        old.unlink()
    for version, key in keyring.services[service].keys.items():
        _write(directory / master_file_name(version), key)
    callers = load_services()[service].get("callers") or {}
    for caller in callers:
        for version, master in keyring.services[caller].keys.items():
            _write(directory / pair_file_name(caller, version), derive_pair_key(master, service))
    return directory


def signed_request(
    signer: Keyring,
    callee: str,
    method: str,
    raw_path: bytes,
    query_string: bytes = b"",
    body: bytes = b"",
    *,
    created: int,
    nonce: str,
    extra_headers: Mapping[bytes, bytes] | None = None,
) -> RawRequest:
    key_id, key = signer.signing_key(callee)
    headers = sign_request(
        key=key,
        key_id=key_id,
        method=method,
        raw_path=raw_path,
        query_string=query_string,
        body=body,
        created=created,
        nonce=nonce,
    )
    pairs = [(name.lower().encode(), value.encode()) for name, value in headers.as_dict().items()]
    pairs.extend((extra_headers or {}).items())
    return RawRequest(method=method, raw_path=raw_path, query_string=query_string, headers=pairs, body=body)


def replace_header(request: RawRequest, name: bytes, value: bytes) -> RawRequest:
    headers = [(k, value if k == name else v) for k, v in request.headers]
    return RawRequest(request.method, request.raw_path, request.query_string, headers, request.body)


def header(request: RawRequest, name: bytes) -> bytes:
    return next(v for k, v in request.headers if k == name)


# bound_socket and serving live in tests/support/http_server.py (re-exported here for callers).


async def raw_http(base_url: str, request_line_target: bytes, method: bytes = b"GET") -> tuple[int, bytes]:
    """Send a request whose target is byte-for-byte as given (httpx would normalise `..`): (status, body)."""
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            method + b" " + request_line_target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Length: 0\r\n\r\n"
        )
        await writer.drain()
        data = await reader.read()
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body
