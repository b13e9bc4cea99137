"""The RFC 9421 signature base and the RFC 9530 Content-Digest, built from raw request bytes.

One module shared by signer and verifier: most real-world signature mismatches are encoding mismatches, so
both sides derive every component from the same bytes with the same code. Structured fields go through
`http_sfv`.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence

from http_sfv.dictionary import Dictionary
from http_sfv.item import InnerList

SIGNATURE_LABEL = "autobot"
ALGORITHM = "hmac-sha256"
COVERED_COMPONENTS: tuple[str, ...] = ("@method", "@path", "@query", "content-digest", "x-service-id")
DIGEST_ALGORITHM = "sha-256"

ParamValue = int | str


class CanonicalError(ValueError):
    """A component value cannot appear in a signature base (newline, control or non-ASCII character)."""


def content_digest(body: bytes) -> str:
    """`sha-256=:<base64>:` over the exact body bytes, the empty body included (RFC 9530)."""
    return str(Dictionary({DIGEST_ALGORITHM: hashlib.sha256(body).digest()}))


def signature_params_list(components: Sequence[str], params: Sequence[tuple[str, ParamValue]]) -> InnerList:
    inner = InnerList(list(components))
    for name, value in params:
        inner.params[name] = value
    return inner


def serialize_signature_params(components: Sequence[str], params: Sequence[tuple[str, ParamValue]]) -> str:
    """The `@signature-params` value, e.g. `("@method" "@path");created=1;keyid="a:v1"`."""
    return str(signature_params_list(components, params))


def _check_value(name: str, value: str) -> None:
    if not value.isascii() or not value.isprintable():
        raise CanonicalError(f"component {name} holds a character that cannot be signed")


def signature_base(components: Sequence[tuple[str, str]], signature_params: str) -> bytes:
    """RFC 9421 section 2.5: one `"<name>": <value>` line per component, then `"@signature-params"`."""
    lines = []
    for name, value in components:
        _check_value(name, value)
        lines.append(f'"{name}": {value}')
    _check_value("@signature-params", signature_params)
    lines.append(f'"@signature-params": {signature_params}')
    return "\n".join(lines).encode("ascii")


def request_components(
    *, method: str, raw_path: bytes, query_string: bytes, content_digest: str, service_id: str
) -> list[tuple[str, str]]:
    """Values of COVERED_COMPONENTS, in order, from the raw target bytes (no decoding, no normalising)."""
    try:
        path = raw_path.decode("ascii") or "/"
        query = "?" + query_string.decode("ascii")
    except UnicodeDecodeError as exc:
        raise CanonicalError("request target holds non-ASCII bytes") from exc
    return [
        ("@method", method),
        ("@path", path),
        ("@query", query),
        ("content-digest", content_digest),
        ("x-service-id", service_id),
    ]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
