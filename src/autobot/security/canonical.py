"""The RFC 9421 signature base and the RFC 9530 Content-Digest, built from raw request bytes.

One module shared by signer and verifier: most real-world signature mismatches are encoding mismatches, so
both sides derive every component from the same bytes with the same code. Structured fields go through
`http_sfv`.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from collections.abc import Sequence

from http_sfv.dictionary import Dictionary
from http_sfv.item import InnerList

SIGNATURE_LABEL = "autobot"
ALGORITHM = "hmac-sha256"
COVERED_COMPONENTS: tuple[str, ...] = ("@method", "@path", "@query", "content-digest", "x-service-id")
DIGEST_ALGORITHM = "sha-256"

ParamValue = int | str
# sf-integer range (RFC 8941 3.3.1) and sf-string characters that need no escaping (RFC 8941 3.3.3).
_MAX_SF_INTEGER = 999_999_999_999_999
_PLAIN_SF_STRING = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]*")
_SF_KEY = re.compile(r"[a-z*][a-z0-9_\-.*]*")


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


@functools.lru_cache(maxsize=32)
def _serialized_components(components: tuple[str, ...]) -> str:
    return str(InnerList(list(components)))


def _serialized_param(name: str, value: ParamValue) -> str | None:
    """`;name=value` for the plain cases (the ones on the request path), else None (left to http_sfv)."""
    if _SF_KEY.fullmatch(name) is None:
        return None
    if type(value) is int and -_MAX_SF_INTEGER <= value <= _MAX_SF_INTEGER:
        return f";{name}={value}"
    if type(value) is str and _PLAIN_SF_STRING.fullmatch(value) is not None:
        return f';{name}="{value}"'
    return None


def serialize_signature_params(components: Sequence[str], params: Sequence[tuple[str, ParamValue]]) -> str:
    """The `@signature-params` value, e.g. `("@method" "@path");created=1;keyid="a:v1"`.

    Byte-for-byte what http_sfv serializes (a test holds them equal). The component list is serialized once
    per distinct list, and integers and strings that need no escaping are written directly: serializing a
    whole InnerList per request cost the verifier about a fifth of its CPU time.
    """
    parts = [_serialized_components(tuple(components))]
    for name, value in params:
        part = _serialized_param(name, value)
        if part is None:
            return str(signature_params_list(components, params))
        parts.append(part)
    return "".join(parts)


def _check_value(name: str, value: str) -> None:
    if not value.isascii() or not value.isprintable():
        raise CanonicalError(f"component {name} holds a character that cannot be signed")


def signature_base(components: Sequence[tuple[str, str]], signature_params: str) -> bytes:
    """RFC 9421 section 2.5: one `"<name>": <value>` line per component, then `"@signature-params"`.

    Every value must be printable ASCII (no newline, which would forge a line of its own). Checked on the
    whole text at once, which holds exactly when each value passes: printable ASCII plus the newlines that
    separate the lines, and no others."""
    lines = [f'"{name}": {value}' for name, value in components]
    lines.append(f'"@signature-params": {signature_params}')
    text = "\n".join(lines)
    if not (text.isascii() and text.count("\n") == len(components) and text.replace("\n", " ").isprintable()):
        for name, value in [*components, ("@signature-params", signature_params)]:
            _check_value(name, value)  # names the component that cannot be signed
        raise CanonicalError("a component name cannot be signed")
    return text.encode("ascii")


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
