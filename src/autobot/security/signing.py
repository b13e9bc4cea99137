"""Signing a request and checking a MAC: pure functions (time and nonce come in as arguments)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from http_sfv.dictionary import Dictionary
from http_sfv.item import InnerList

from autobot.security.canonical import (
    ALGORITHM,
    COVERED_COMPONENTS,
    SIGNATURE_LABEL,
    ParamValue,
    content_digest,
    request_components,
    serialize_signature_params,
    signature_base,
    signature_params_list,
)
from autobot.security.keys import KeyId

HEADER_SERVICE_ID = "X-Service-ID"
HEADER_CONTENT_DIGEST = "Content-Digest"
HEADER_SIGNATURE_INPUT = "Signature-Input"
HEADER_SIGNATURE = "Signature"
SIGNING_HEADERS = frozenset(
    name.lower()
    for name in (HEADER_SERVICE_ID, HEADER_CONTENT_DIGEST, HEADER_SIGNATURE_INPUT, HEADER_SIGNATURE)
)


@dataclass(frozen=True)
class SignedHeaders:
    service_id: str
    content_digest: str
    signature_input: str
    signature: str

    def as_dict(self) -> dict[str, str]:
        return {
            HEADER_SERVICE_ID: self.service_id,
            HEADER_CONTENT_DIGEST: self.content_digest,
            HEADER_SIGNATURE_INPUT: self.signature_input,
            HEADER_SIGNATURE: self.signature,
        }


def compute_mac(key: bytes, base: bytes) -> bytes:
    # The one-shot form skips building an HMAC object: half the cost, same bytes.
    return hmac.digest(key, base, hashlib.sha256)


def mac_matches(key: bytes, base: bytes, signature: bytes) -> bool:
    """Constant-time comparison of the expected MAC with the received one (bytes, never str)."""
    return hmac.compare_digest(compute_mac(key, base), signature)


def new_nonce() -> str:
    """128 random bits, URL-safe base64 (22 characters)."""
    return secrets.token_urlsafe(16)


def _params(created: int, nonce: str, key_id: KeyId, algorithm: str) -> list[tuple[str, ParamValue]]:
    return [("created", created), ("nonce", nonce), ("keyid", str(key_id)), ("alg", algorithm)]


def signature_params(*, created: int, nonce: str, key_id: KeyId, algorithm: str = ALGORITHM) -> InnerList:
    return signature_params_list(COVERED_COMPONENTS, _params(created, nonce, key_id, algorithm))


def sign_request(
    *,
    key: bytes,
    key_id: KeyId,
    method: str,
    raw_path: bytes,
    query_string: bytes,
    body: bytes,
    created: int,
    nonce: str,
) -> SignedHeaders:
    """The four headers that authenticate a request, for the exact target bytes and body that will be sent."""
    digest = content_digest(body)
    params = serialize_signature_params(COVERED_COMPONENTS, _params(created, nonce, key_id, ALGORITHM))
    components = request_components(
        method=method,
        raw_path=raw_path,
        query_string=query_string,
        content_digest=digest,
        service_id=key_id.service,
    )
    mac = compute_mac(key, signature_base(components, params))
    return SignedHeaders(
        service_id=key_id.service,
        content_digest=digest,
        # A one-member Dictionary serializes as `<label>=<inner list>`: the params text is reused as is.
        signature_input=f"{SIGNATURE_LABEL}={params}",
        signature=str(Dictionary({SIGNATURE_LABEL: mac})),
    )
