"""Property tests of verify_request with a real Redis: 10,000 generated requests in total.

Properties: the verifier never raises; it never answers 5xx while Redis is up; it never accepts (200 on a
service route, or 403, which also needs a verified MAC) a request the right pair key did not sign exactly as
received; and every correctly signed request gets the matrix's answer.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import secrets
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis
from tests.security.auth_support import replace_header, signed_request
from tests.support.redis_server import RedisServer

from autobot.security.canonical import content_digest
from autobot.security.keyring import Keyring
from autobot.security.keys import KeyId
from autobot.security.matrix import Matrix
from autobot.security.replay import NonceStore
from autobot.security.signing import sign_request
from autobot.security.verify import RawRequest, VerifyContext, verify_request

NOW = 1_700_000_000
FUZZ = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"])
_SEGMENT_CHARS = "abcXYZ019-._~!$&'()*+,;=:@"
SEGMENT = st.one_of(
    st.text(_SEGMENT_CHARS, min_size=1, max_size=8),
    st.sampled_from(["%20", "%41", "%7E", "%C3%A9"]),
).filter(lambda s: s not in (".", ".."))
SAFE_PATH = st.one_of(
    st.sampled_from(["/api/process", "/api/health", "/api/other", "/"]),
    st.lists(SEGMENT, min_size=1, max_size=5).map(lambda parts: "/" + "/".join(parts)),
)
QUERY = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="#"), max_size=30
).filter(lambda q: "%00" not in q)
BODY = st.binary(max_size=200)
CALLERS = st.sampled_from(["main-backend", "ai-stack"])


@pytest.fixture(scope="module")
def fuzz(
    redis_server: RedisServer, keyrings: dict[str, Keyring], npu_matrix: Matrix
) -> Iterator[tuple[Any, Any]]:
    """A private event loop and Redis client, so hypothesis can drive the async verifier from sync tests."""
    runner = asyncio.Runner()
    redis = Redis.from_url(redis_server.url)
    ctx = VerifyContext("npu-worker", keyrings["npu-worker"], npu_matrix, NonceStore(redis, 600))

    def run(request: RawRequest, context: VerifyContext = ctx) -> Any:
        return runner.run(verify_request(request, context, now=NOW))

    try:
        yield run, ctx
    finally:
        runner.run(redis.aclose())
        runner.close()


def _sign(
    keyrings: dict[str, Keyring], caller: str, method: str, path: str, query: str, body: bytes
) -> RawRequest:
    return signed_request(
        keyrings[caller],
        "npu-worker",
        method,
        path.encode(),
        query.encode(),
        body,
        created=NOW,
        nonce=uuid.uuid4().hex,
    )


# -- 1. arbitrary input: never raises, never 5xx, never accepted on a service route --

HEADER_NAMES = st.sampled_from(
    [b"x-service-id", b"content-digest", b"signature-input", b"signature", b"X-Service-ID", b"host", b"other"]
)
PLAUSIBLE_VALUES = st.one_of(
    st.binary(max_size=120),
    st.sampled_from(
        [b"main-backend", b"ai-stack", b"sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:"]
    ),
    st.builds(
        lambda comps, created, nonce, keyid, alg: (
            f'autobot=({comps});created={created};nonce="{nonce}";keyid="{keyid}";alg="{alg}"'.encode()
        ),
        st.sampled_from(['"@method" "@path" "@query" "content-digest" "x-service-id"', '"@method"', ""]),
        st.integers(),
        st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters='"\\'), max_size=40),
        st.sampled_from(["main-backend:v1", "ai-stack:v1", "x:v0", ""]),
        st.sampled_from(["hmac-sha256", "rsa"]),
    ),
    st.binary(min_size=32, max_size=32).map(lambda b: b"autobot=:" + base64.b64encode(b) + b":"),
)


@settings(FUZZ, max_examples=3000)
@given(
    method=st.one_of(METHODS, st.text(max_size=8)),
    raw_path=st.one_of(SAFE_PATH.map(str.encode), st.binary(max_size=40)),
    query=st.binary(max_size=30),
    headers=st.lists(st.tuples(HEADER_NAMES, PLAUSIBLE_VALUES), max_size=6),
    body=BODY,
)
def test_arbitrary_requests_never_crash_and_are_never_accepted(
    fuzz: tuple[Any, VerifyContext],
    method: str,
    raw_path: bytes,
    query: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
) -> None:
    run, _ = fuzz
    decision = run(RawRequest(method, raw_path, query, headers, body))
    assert decision.status in (200, 401)
    if decision.status == 200:
        assert decision.route_kind == "public"


# -- 2. correctly signed requests get exactly the matrix's answer --


@settings(FUZZ, max_examples=2500)
@given(
    caller=st.sampled_from(["main-backend", "ai-stack", "browser-service"]),
    method=METHODS,
    path=SAFE_PATH,
    query=QUERY,
    body=BODY,
)
def test_correctly_signed_requests_get_the_matrix_answer(
    fuzz: tuple[Any, VerifyContext],
    keyrings: dict[str, Keyring],
    caller: str,
    method: str,
    path: str,
    query: str,
    body: bytes,
) -> None:
    run, ctx = fuzz
    decision = run(_sign(keyrings, caller, method, path, query, body))
    if ctx.matrix.is_public(method, path):
        assert (decision.status, decision.route_kind) == (200, "public")
    elif caller == "browser-service":  # holds keys, but no grant on npu-worker, so no pair key there
        assert (decision.status, decision.reason) == (401, "unknown_caller")
    elif ctx.matrix.allows(caller, method, path):
        assert (decision.status, decision.caller) == (200, caller)
    else:
        assert (decision.status, decision.reason) == (403, "not_granted")


# -- 3. any change to a covered part after signing is refused --


def _signature_input(request: RawRequest) -> bytes:
    return next(v for k, v in request.headers if k == b"signature-input")


@st.composite
def tampered(draw: st.DrawFn, keyrings: dict[str, Keyring]) -> RawRequest:
    caller = draw(CALLERS)
    original = _sign(keyrings, caller, "POST", "/api/process", draw(QUERY), draw(BODY))
    what = draw(
        st.sampled_from(
            [
                "method",
                "path",
                "query",
                "body",
                "digest",
                "service",
                "keyid",
                "created",
                "nonce",
                "sig",
                "alg",
            ]
        )
    )
    sig_input = _signature_input(original)
    if what == "method":
        return dataclasses.replace(original, method=draw(METHODS.filter(lambda m: m != "POST")))
    if what == "path":
        path = draw(SAFE_PATH.filter(lambda p: p != "/api/process"))
        return dataclasses.replace(original, raw_path=path.encode())
    if what == "query":
        query = draw(QUERY.filter(lambda q: q.encode() != original.query_string))
        return dataclasses.replace(original, query_string=query.encode())
    if what == "body":
        return dataclasses.replace(original, body=draw(BODY.filter(lambda b: b != original.body)))
    if what == "digest":
        other = draw(BODY.filter(lambda b: b != original.body))
        swapped = dataclasses.replace(original, body=other)
        return replace_header(swapped, b"content-digest", content_digest(other).encode())
    if what == "service":
        other_caller = "ai-stack" if caller == "main-backend" else "main-backend"
        return replace_header(original, b"x-service-id", other_caller.encode())
    if what == "keyid":
        version = draw(st.integers(min_value=2, max_value=10**6))
        return replace_header(
            original, b"signature-input", sig_input.replace(b":v1", f":v{version}".encode())
        )
    if what == "created":
        delta = draw(st.integers(min_value=-300, max_value=300).filter(lambda d: d != 0))
        return replace_header(
            original, b"signature-input", sig_input.replace(str(NOW).encode(), str(NOW + delta).encode())
        )
    if what == "nonce":
        nonce = sig_input.split(b'nonce="')[1].split(b'"')[0]
        new = draw(
            st.text("0123456789abcdef", min_size=32, max_size=32).filter(lambda n: n.encode() != nonce)
        )
        return replace_header(original, b"signature-input", sig_input.replace(nonce, new.encode()))
    if what == "alg":
        alg = draw(st.sampled_from(["hmac-sha512", "ed25519", "HMAC-SHA256", ""]))
        return replace_header(original, b"signature-input", sig_input.replace(b"hmac-sha256", alg.encode()))
    forged = draw(st.binary(min_size=32, max_size=32))
    return replace_header(original, b"signature", b"autobot=:" + base64.b64encode(forged) + b":")


@settings(FUZZ, max_examples=3000)
@given(data=st.data())
def test_tampered_requests_are_refused(
    fuzz: tuple[Any, VerifyContext], keyrings: dict[str, Keyring], data: st.DataObject
) -> None:
    run, ctx = fuzz
    request = data.draw(tampered(keyrings))
    assume(not ctx.matrix.is_public(request.method, request.raw_path.decode()))
    decision = run(request)
    assert decision.status == 401, decision


# -- 4. a signature made with any other key is refused --


@settings(FUZZ, max_examples=1500)
@given(
    caller=CALLERS,
    key=st.one_of(st.binary(min_size=32, max_size=32), st.sampled_from(["other-callee", "master"])),
    query=QUERY,
    body=BODY,
)
def test_signatures_by_any_other_key_are_refused(
    fuzz: tuple[Any, VerifyContext],
    keyrings: dict[str, Keyring],
    caller: str,
    key: bytes | str,
    query: str,
    body: bytes,
) -> None:
    run, _ = fuzz
    master = keyrings[caller].masters[1]
    if key == "other-callee":  # the caller's pair key for another service (which that service holds)
        key = keyrings[caller].signing_key("browser-service")[1]
    elif key == "master":
        key = master
    assert isinstance(key, bytes)
    assume(key != keyrings[caller].signing_key("npu-worker")[1])
    headers = sign_request(
        key=key,
        key_id=KeyId(caller, 1),
        method="POST",
        raw_path=b"/api/process",
        query_string=query.encode(),
        body=body,
        created=NOW,
        nonce=secrets.token_hex(16),
    )
    pairs = [(k.lower().encode(), v.encode()) for k, v in headers.as_dict().items()]
    decision = run(RawRequest("POST", b"/api/process", query.encode(), pairs, body))
    assert (decision.status, decision.reason) == (401, "bad_signature")
