"""Interoperability with an independent RFC 9421 implementation (the `http-message-signatures` library).

Our signer's requests must verify there given only the pair key, and requests it signs with our components
must pass our verifier: the wire format is standard, not a private dialect.
"""

from __future__ import annotations

import base64
import datetime
import time

import httpx
import pytest
from http_message_signatures import (
    HTTPMessageSigner,
    HTTPMessageVerifier,
    InvalidSignature,
    MappingKeyResolver,
)
from http_message_signatures.algorithms import HMAC_SHA256

from autobot.security.canonical import COVERED_COMPONENTS
from autobot.security.keyring import Keyring
from autobot.security.signing import new_nonce, sign_request
from autobot.security.verify import RawRequest, VerifyContext, verify_request

RFC_SHARED_SECRET = base64.b64decode(
    "uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ=="
)


def _rfc_test_request() -> httpx.Request:
    return httpx.Request(
        "POST",
        "http://example.com/foo?param=Value&Pet=dog",
        headers={
            "Host": "example.com",
            "Date": "Tue, 20 Apr 2021 02:07:55 GMT",
            "Content-Type": "application/json",
            "Content-Digest": "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyeal"
            "dVLvRwEmTHWXvJwew==:",
            "Content-Length": "18",
            "Signature-Input": 'sig-b25=("date" "@authority" "content-type");created=1618884473;'
            'keyid="test-shared-secret"',
            "Signature": "sig-b25=:pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=:",
        },
        content=b'{"hello": "world"}',
    )


def test_reference_library_accepts_the_rfc_b25_example() -> None:
    """Sanity check of the checker itself on the RFC's own example (so its verdicts below mean something)."""
    verifier = HTTPMessageVerifier(
        signature_algorithm=HMAC_SHA256,
        key_resolver=MappingKeyResolver(
            public_keys={"test-shared-secret": RFC_SHARED_SECRET}, private_keys={}
        ),
    )
    verifier.max_clock_skew = datetime.timedelta(days=365 * 100)
    (result,) = verifier.verify(_rfc_test_request(), max_age=None)
    assert result.label == "sig-b25"


def _our_signed_httpx_request(
    signer: Keyring, callee: str, path: str, query: str, body: bytes
) -> httpx.Request:
    key_id, key = signer.signing_key(callee)
    headers = sign_request(
        key=key,
        key_id=key_id,
        method="POST",
        raw_path=path.encode(),
        query_string=query.encode(),
        body=body,
        created=int(time.time()),
        nonce=new_nonce(),
    )
    url = f"http://{callee}:8081{path}" + (f"?{query}" if query else "")
    return httpx.Request("POST", url, headers=headers.as_dict(), content=body)


@pytest.mark.parametrize(
    ("path", "query"),
    [("/api/process", ""), ("/api/process", "a=1&b=x%20y&c=%2F"), ("/api/a%20b/c", "z=+")],
)
def test_independent_library_verifies_our_requests_with_the_pair_key(
    keyrings: dict[str, Keyring], path: str, query: str
) -> None:
    body = b'{"task": "embed", "text": "hello"}'
    request = _our_signed_httpx_request(keyrings["main-backend"], "npu-worker", path, query, body)
    key_id, pair_key = keyrings["main-backend"].signing_key("npu-worker")
    verifier = HTTPMessageVerifier(
        signature_algorithm=HMAC_SHA256,
        key_resolver=MappingKeyResolver(public_keys={str(key_id): pair_key}, private_keys={}),
    )
    (result,) = verifier.verify(request, body=body, require_components=COVERED_COMPONENTS)
    assert result.label == "autobot"
    assert result.parameters["keyid"] == str(key_id)
    assert result.body == body  # the library also checked Content-Digest against the body

    # ...and it refuses the same request under another pair's key or with a changed body.
    other = keyrings["main-backend"].signing_key("ai-stack")[1]
    wrong = HTTPMessageVerifier(
        signature_algorithm=HMAC_SHA256,
        key_resolver=MappingKeyResolver(public_keys={str(key_id): other}, private_keys={}),
    )
    with pytest.raises(InvalidSignature):
        wrong.verify(request)
    with pytest.raises(InvalidSignature):
        verifier.verify(request, body=body + b" ")


async def test_our_verifier_accepts_requests_signed_by_the_independent_library(
    ctx: VerifyContext, keyrings: dict[str, Keyring]
) -> None:
    key_id, pair_key = keyrings["main-backend"].signing_key("npu-worker")
    body = b'{"x": 1}'
    request = httpx.Request(
        "POST",
        "http://npu-worker:8081/api/process?q=a%20b",
        headers={"X-Service-ID": "main-backend"},
        content=body,
    )
    signer = HTTPMessageSigner(
        signature_algorithm=HMAC_SHA256,
        key_resolver=MappingKeyResolver(public_keys={}, private_keys={str(key_id): pair_key}),
    )
    signer.sign(
        request,
        key_id=str(key_id),
        nonce=new_nonce(),
        label="autobot",
        covered_component_ids=COVERED_COMPONENTS,
        body=body,
    )
    raw = RawRequest(
        method="POST",
        raw_path=b"/api/process",
        query_string=b"q=a%20b",
        headers=[(k.lower().encode(), v.encode()) for k, v in request.headers.items()],
        body=body,
    )
    decision = await verify_request(raw, ctx)
    assert (decision.status, decision.reason, decision.caller) == (200, "ok", "main-backend")
