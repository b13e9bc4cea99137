"""verify_request against a real Redis: every covered component, time window, replay, keys, matrix, paths."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis
from tests.security.auth_support import (
    MATRIX_FILE,
    controller_keyring,
    header,
    load_services,
    replace_header,
    signed_request,
    write_key_dir,
)
from tests.support.redis_server import free_port

from autobot.config import RedisConfig
from autobot.redis_pool import create_redis
from autobot.security.canonical import CanonicalError, content_digest
from autobot.security.keyring import Keyring
from autobot.security.keyring_file import ControllerKeyring
from autobot.security.keys import KeyId, derive_pair_key
from autobot.security.matrix import Matrix
from autobot.security.replay import NonceStore, nonce_key
from autobot.security.signing import new_nonce, sign_request
from autobot.security.verify import RawRequest, VerifyContext, verify_request

NOW = 1_700_000_000
BODY = b'{"task": "embed", "text": "hello"}'


def _signed(keyrings: dict[str, Keyring], caller: str = "main-backend", **kw: object) -> RawRequest:
    args: dict[str, object] = {
        "method": "POST",
        "raw_path": b"/api/process",
        "query_string": b"mode=fast&x=a%20b",
        "body": BODY,
        "created": NOW,
        "nonce": new_nonce(),
    }
    args.update(kw)
    return signed_request(keyrings[caller], "npu-worker", **args)  # type: ignore[arg-type]


async def test_correctly_signed_request_is_allowed_and_names_the_caller(
    ctx: VerifyContext, keyrings: dict[str, Keyring], redis_client: Redis
) -> None:
    request = _signed(keyrings)
    decision = await verify_request(request, ctx, now=NOW)
    assert (decision.status, decision.reason, decision.route_kind) == (200, "ok", "service")
    assert (decision.caller, decision.keyid, decision.label) == ("main-backend", "main-backend:v1", "allow")
    nonce = header(request, b"signature-input").split(b'nonce="')[1].split(b'"')[0].decode()
    key = nonce_key("npu-worker", "main-backend", nonce)
    assert await redis_client.exists(key) == 1
    assert 590 <= await redis_client.ttl(key) <= 600


def _tamper_signature_input(request: RawRequest, old: bytes, new: bytes) -> RawRequest:
    value = header(request, b"signature-input")
    assert old in value
    return replace_header(request, b"signature-input", value.replace(old, new))


TAMPERS: dict[str, Callable[[RawRequest], RawRequest]] = {
    "method": lambda r: dataclasses.replace(r, method="PUT"),
    "path": lambda r: dataclasses.replace(r, raw_path=b"/api/processX"),
    "query": lambda r: dataclasses.replace(r, query_string=b"mode=slow&x=a%20b"),
    "query-encoding": lambda r: dataclasses.replace(r, query_string=b"mode=fast&x=a+b"),
    "body": lambda r: dataclasses.replace(r, body=BODY + b" "),
    "digest-and-body": lambda r: replace_header(
        dataclasses.replace(r, body=b"{}"),
        b"content-digest",
        content_digest(b"{}").encode(),
    ),
    "service-id": lambda r: replace_header(r, b"x-service-id", b"ai-stack"),
    "keyid": lambda r: _tamper_signature_input(r, b'keyid="main-backend:v1"', b'keyid="main-backend:v2"'),
    "created": lambda r: _tamper_signature_input(r, b"created=1700000000", b"created=1700000001"),
    "nonce": lambda r: _tamper_signature_input(r, b'nonce="', b'nonce="X'),
    "alg": lambda r: _tamper_signature_input(r, b'alg="hmac-sha256"', b'alg="hmac-sha512"'),
    "components": lambda r: _tamper_signature_input(r, b' "@query"', b""),
    "signature": lambda r: replace_header(r, b"signature", b"autobot=:" + b"A" * 43 + b"=:"),
}


@pytest.mark.parametrize("name", sorted(TAMPERS))
async def test_each_tampered_component_is_refused(
    name: str, ctx: VerifyContext, keyrings: dict[str, Keyring]
) -> None:
    decision = await verify_request(TAMPERS[name](_signed(keyrings)), ctx, now=NOW)
    assert decision.status == 401, decision
    assert decision.reason != "ok"


async def test_reasons_are_specific(ctx: VerifyContext, keyrings: dict[str, Keyring]) -> None:
    reasons = {}
    for name in ("body", "service-id", "keyid", "alg", "method"):
        reasons[name] = (await verify_request(TAMPERS[name](_signed(keyrings)), ctx, now=NOW)).reason
    assert reasons == {
        "body": "digest_mismatch",
        "service-id": "keyid_mismatch",
        "keyid": "unknown_key_version",
        "alg": "bad_algorithm",
        "method": "bad_signature",
    }


@pytest.mark.parametrize(("skew", "status"), [(-301, 401), (301, 401), (-300, 200), (300, 200), (0, 200)])
async def test_created_must_be_within_300_seconds_both_ways(
    skew: int, status: int, ctx: VerifyContext, keyrings: dict[str, Keyring]
) -> None:
    decision = await verify_request(_signed(keyrings, created=NOW + skew), ctx, now=NOW)
    assert decision.status == status, decision
    if status == 401:
        assert decision.reason == "created_out_of_window"


async def test_replay_is_refused(ctx: VerifyContext, keyrings: dict[str, Keyring]) -> None:
    request = _signed(keyrings)
    assert (await verify_request(request, ctx, now=NOW)).status == 200
    again = await verify_request(request, ctx, now=NOW + 1)
    assert (again.status, again.reason) == (401, "replayed_nonce")


async def test_nonce_is_stored_only_after_the_mac_verified(
    ctx: VerifyContext, keyrings: dict[str, Keyring], redis_client: Redis
) -> None:
    forged = TAMPERS["signature"](_signed(keyrings))
    assert (await verify_request(forged, ctx, now=NOW)).status == 401
    assert await redis_client.dbsize() == 0


async def test_unknown_caller_is_refused(ctx: VerifyContext, keyrings: dict[str, Keyring]) -> None:
    # browser-service has keys, but the matrix gives it no route on npu-worker, so npu-worker has no pair key.
    decision = await verify_request(_signed(keyrings, caller="browser-service"), ctx, now=NOW)
    assert (decision.status, decision.reason, decision.caller) == (401, "unknown_caller", "browser-service")


async def test_another_pairs_key_is_refused(ctx: VerifyContext, keyrings: dict[str, Keyring]) -> None:
    """main-backend's pair key for ai-stack must not work towards npu-worker (ai-stack holds that key)."""
    master = keyrings["main-backend"].masters[1]
    headers = sign_request(
        key=derive_pair_key(master, "ai-stack"),
        key_id=KeyId("main-backend", 1),
        method="POST",
        raw_path=b"/api/process",
        query_string=b"",
        body=BODY,
        created=NOW,
        nonce=new_nonce(),
    )
    request = RawRequest(
        "POST",
        b"/api/process",
        b"",
        [(k.lower().encode(), v.encode()) for k, v in headers.as_dict().items()],
        BODY,
    )
    decision = await verify_request(request, ctx, now=NOW)
    assert (decision.status, decision.reason) == (401, "bad_signature")


async def test_wrong_keyid_is_refused(ctx: VerifyContext, keyrings: dict[str, Keyring]) -> None:
    """A keyid of another caller than X-Service-ID, or a version never issued, is refused before the MAC."""
    request = _signed(keyrings)
    other = _tamper_signature_input(request, b'keyid="main-backend:v1"', b'keyid="ai-stack:v1"')
    assert (await verify_request(other, ctx, now=NOW)).reason == "keyid_mismatch"
    bogus = _tamper_signature_input(request, b'keyid="main-backend:v1"', b'keyid="main-backend"')
    assert (await verify_request(bogus, ctx, now=NOW)).reason == "malformed_header:signature-input"


async def test_allowed_caller_on_a_route_not_granted_is_403(
    ctx: VerifyContext, keyrings: dict[str, Keyring]
) -> None:
    decision = await verify_request(
        _signed(keyrings, caller="ai-stack", method="DELETE", raw_path=b"/api/process"), ctx, now=NOW
    )
    assert (decision.status, decision.reason, decision.caller) == (403, "not_granted", "ai-stack")
    decision = await verify_request(
        _signed(keyrings, caller="main-backend", method="POST", raw_path=b"/api/other"), ctx, now=NOW
    )
    assert decision.status == 403


async def test_public_route_passes_without_signature(ctx: VerifyContext) -> None:
    decision = await verify_request(RawRequest("GET", b"/api/health"), ctx, now=NOW)
    assert (decision.status, decision.route_kind, decision.label) == (200, "public", "public")
    head = await verify_request(RawRequest("HEAD", b"/api/health"), ctx, now=NOW)
    assert (head.status, head.reason) == (401, "missing_header:x-service-id")


@pytest.mark.parametrize(
    "raw_path",
    [
        b"/api/process/../process",
        b"/api//process",
        b"/api%2Fprocess",
        b"/api/process%2f",
        b"/api\\process",
        b"/api/%5Cprocess",
        b"/api/process%00",
        b"/api/%2E%2E/process",
        b"/api/%2e/process",
        b"/api/process\x00",
    ],
)
async def test_unsafe_paths_are_refused_even_when_signed(
    raw_path: bytes, ctx: VerifyContext, keyrings: dict[str, Keyring]
) -> None:
    try:
        request = _signed(keyrings, raw_path=raw_path)
    except CanonicalError:  # a NUL byte cannot even be signed: send it under a signature of the clean path
        request = dataclasses.replace(_signed(keyrings), raw_path=raw_path)
    decision = await verify_request(request, ctx, now=NOW)
    assert (decision.status, decision.reason) == (401, "unsafe_path")


@pytest.mark.parametrize("raw_path", [b"/api/health/..", b"/api/health%2F", b"//api/health"])
async def test_unsafe_paths_are_refused_on_public_routes_too(raw_path: bytes, ctx: VerifyContext) -> None:
    decision = await verify_request(RawRequest("GET", raw_path), ctx, now=NOW)
    assert (decision.status, decision.reason) == (401, "unsafe_path")


@pytest.mark.parametrize("missing", [b"x-service-id", b"content-digest", b"signature-input", b"signature"])
async def test_missing_headers_are_refused(
    missing: bytes, ctx: VerifyContext, keyrings: dict[str, Keyring]
) -> None:
    request = _signed(keyrings)
    request = dataclasses.replace(request, headers=[(k, v) for k, v in request.headers if k != missing])
    decision = await verify_request(request, ctx, now=NOW)
    assert (decision.status, decision.reason) == (401, f"missing_header:{missing.decode()}")


async def test_redis_down_is_503_fail_closed(keyrings: dict[str, Keyring], ctx: VerifyContext) -> None:
    dead = create_redis(RedisConfig(url=f"redis://127.0.0.1:{free_port()}/0", retries=0))
    try:
        down = dataclasses.replace(ctx, nonces=NonceStore(dead))
        decision = await verify_request(_signed(keyrings), down, now=NOW)
        assert (decision.status, decision.reason) == (503, "replay_store_unavailable")
        # a forged request is still 401: Redis is only asked after the MAC verified
        forged = await verify_request(TAMPERS["body"](_signed(keyrings)), down, now=NOW)
        assert forged.status == 401
    finally:
        await dead.aclose(close_connection_pool=True)


async def test_previous_key_version_accepted_older_refused(tmp_path: Path, redis_client: Redis) -> None:
    """Rotation: verifiers publish v2 while signers still use v1; after v3, v1 is refused."""
    ring1 = controller_keyring()
    ring2 = controller_keyring(rotate=("main-backend",), base=ring1)
    ring3 = controller_keyring(rotate=("main-backend",), base=ring2)
    signer_v1 = Keyring.load_dir(write_key_dir(tmp_path / "main1", "main-backend", ring1), "main-backend")
    signer_v2 = Keyring.load_dir(write_key_dir(tmp_path / "main2", "main-backend", ring2), "main-backend")
    signer_v3 = Keyring.load_dir(write_key_dir(tmp_path / "main3", "main-backend", ring3), "main-backend")
    npu_dir = tmp_path / "npu"

    async def check(verifier_ring: ControllerKeyring, signer: Keyring) -> int:
        write_key_dir(npu_dir, "npu-worker", verifier_ring)
        ctx = VerifyContext(
            "npu-worker",
            Keyring.load_dir(npu_dir, "npu-worker"),
            Matrix.load(MATRIX_FILE, "npu-worker"),
            NonceStore(redis_client),
        )
        request = signed_request(
            signer,
            "npu-worker",
            "POST",
            b"/api/process",
            body=b"{}",
            created=int(time.time()),
            nonce=new_nonce(),
        )
        return (await verify_request(request, ctx)).status

    assert await check(ring2, signer_v1) == 200  # new version published, old signer still accepted
    assert await check(ring2, signer_v2) == 200
    assert await check(ring3, signer_v2) == 200  # previous accepted
    assert await check(ring3, signer_v3) == 200
    assert await check(ring3, signer_v1) == 401  # older than previous: refused


@pytest.mark.parametrize("offset", [300.5, -300.5, 300.999])
async def test_created_window_counts_fractions_of_a_second(
    offset: float, ctx: VerifyContext, keyrings: dict[str, Keyring]
) -> None:
    """+-300 s means 300 s, not 300.999 s: `now` must not be truncated to whole seconds."""
    decision = await verify_request(_signed(keyrings, created=NOW), ctx, now=NOW + offset)
    assert (decision.status, decision.reason) == (401, "created_out_of_window")


async def test_a_request_cannot_be_replayed_after_its_nonce_expired(
    ctx: VerifyContext, keyrings: dict[str, Keyring], redis_client: Redis
) -> None:
    """The nonce lives 600 s from first use; the request must be out of its time window by then.

    A signer 300 s ahead: its request is first seen 300 s before `created`, and its nonce expires
    600 s later, i.e. 300 s after `created`. A replay from that moment on must fail the time check.
    """
    request = _signed(keyrings, created=NOW)
    first = await verify_request(request, ctx, now=NOW - 300)
    assert first.status == 200
    nonce = header(request, b"signature-input").split(b'nonce="')[1].split(b'"')[0].decode()
    key = nonce_key("npu-worker", "main-backend", nonce)
    assert 599 <= await redis_client.ttl(key) <= 600
    await redis_client.pexpire(key, 1)  # the 600 s elapse (Redis expires the key itself)
    await asyncio.sleep(0.05)
    assert await redis_client.exists(key) == 0
    replay = await verify_request(request, ctx, now=NOW + 300.4)  # 600.4 s after the first use
    assert (replay.status, replay.reason) == (401, "created_out_of_window")


async def test_large_body_digest_does_not_stall_the_event_loop(
    ctx: VerifyContext, keyrings: dict[str, Keyring]
) -> None:
    """Hashing a large body (here 64 MiB) must not run on the event-loop thread, where it would freeze every
    other request. Measured in CPU time of this thread, so other load on the machine cannot disturb it."""
    body = secrets.token_bytes(1024) * 64 * 1024
    services = load_services()
    grant = {"methods": ["POST"], "path": "/api/process", "max_body_bytes": len(body)}
    services["npu-worker"] = {**services["npu-worker"], "callers": {"main-backend": [grant]}}
    ctx = dataclasses.replace(ctx, matrix=Matrix.from_services(services, "npu-worker"))
    request = _signed(keyrings, body=body)
    started = time.thread_time()
    hashlib.sha256(body).digest()
    hash_cpu_s = time.thread_time() - started
    started = time.thread_time()
    decision = await verify_request(request, ctx, now=NOW)
    loop_cpu_s = time.thread_time() - started
    assert decision.status == 200, decision
    assert loop_cpu_s < hash_cpu_s / 2, (loop_cpu_s, hash_cpu_s)


def test_remembered_targets_still_check_each_query_and_stay_bounded(ctx: VerifyContext) -> None:
    """classify remembers what the method and path say (route kind, path safety), never the query's
    verdict, and remembers a bounded number of short paths."""
    assert ctx.classify("POST", b"/api/process", b"a=1").safe
    assert not ctx.classify("POST", b"/api/process", b"a=%00").safe  # same path, unsafe query
    assert not ctx.classify("POST", b"/api/process", b"a b").safe
    assert ctx.classify("POST", b"/api/process", b"").safe
    assert ctx.classify("GET", b"/api/health", b"").route_kind == "public"
    assert ctx.classify("POST", b"/api/health", b"").route_kind == "service"  # methods are exact
    assert not ctx.classify("GET", b"/api/../health", b"").safe
    assert not ctx.classify("GET", b"/api/../health", b"").safe  # remembered unsafe, still unsafe
    assert ctx.classify("GET", b"/" + b"a" * 300, b"").safe
    assert ("GET", b"/" + b"a" * 300) not in ctx._targets  # long paths are not remembered
    for n in range(3000):
        ctx.classify("GET", f"/api/x{n}".encode(), b"")
    assert len(ctx._targets) <= 1024
