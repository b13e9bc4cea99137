"""Benchmark: cost of signing and verifying one request (1 KiB body), and ours vs `http-message-signatures`.

Run: python tests/perf/bench_signing.py [--count N]
Prints microseconds per request for: sign; verify (CPU part: every check except the Redis nonce write);
verify including the nonce SET NX against a real local redis-server, one request at a time and with 16 in
flight (wall time per request); the independent library verifying the same request (signature and
Content-Digest). Not a test: numbers only.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from http_message_signatures import HTTPMessageVerifier, MappingKeyResolver  # noqa: E402
from http_message_signatures.algorithms import HMAC_SHA256  # noqa: E402
from tests.security.auth_support import MATRIX_FILE, controller_keyring, write_key_dir  # noqa: E402
from tests.support.redis_server import running_redis  # noqa: E402

from autobot.config import RedisConfig  # noqa: E402
from autobot.redis_pool import create_redis  # noqa: E402
from autobot.security.canonical import COVERED_COMPONENTS  # noqa: E402
from autobot.security.keyring import Keyring  # noqa: E402
from autobot.security.matrix import Matrix  # noqa: E402
from autobot.security.replay import NonceStore  # noqa: E402
from autobot.security.signing import new_nonce, sign_request  # noqa: E402
from autobot.security.verify import RawRequest, VerifyContext, verify_request  # noqa: E402

BODY = (b'{"task":"embed","text":"' + b"x" * 1024)[:1022] + b'"}'
PATH = b"/api/process"
QUERY = b"mode=fast&trace=a%20b"


class AcceptEveryNonce:
    """Benchmark-only stand-in for the Redis nonce store, to isolate the verifier's CPU cost."""

    async def remember(self, callee: str, caller: str, nonce: str) -> bool:
        return True


def per_call_us(fn: Callable[[], object], count: int, repeats: int = 5) -> float:
    """Best-of-`repeats` mean microseconds per call (the minimum is the least disturbed by other load)."""
    results = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(count):
            fn()
        results.append((time.perf_counter() - started) / count * 1e6)
    return min(results)


async def per_await_us(make: Callable[[], object], count: int, repeats: int = 5) -> float:
    results = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(count):
            await make()  # type: ignore[misc]
        results.append((time.perf_counter() - started) / count * 1e6)
    return min(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=5000)
    args = parser.parse_args()
    count: int = args.count

    with tempfile.TemporaryDirectory() as tmp:
        ring = controller_keyring()
        signer = Keyring.load_dir(write_key_dir(Path(tmp) / "main", "main-backend", ring), "main-backend")
        verifier_keys = Keyring.load_dir(write_key_dir(Path(tmp) / "npu", "npu-worker", ring), "npu-worker")
        key_id, pair_key = signer.signing_key("npu-worker")
        matrix = Matrix.load(MATRIX_FILE, "npu-worker")

        def sign() -> dict[str, str]:
            return sign_request(
                key=pair_key,
                key_id=key_id,
                method="POST",
                raw_path=PATH,
                query_string=QUERY,
                body=BODY,
                created=int(time.time()),
                nonce=new_nonce(),
            ).as_dict()

        sign_us = per_call_us(sign, count)

        # Pre-sign distinct requests so the Redis variant never sees a replay.
        def requests(n: int) -> list[RawRequest]:
            signed = [sign() for _ in range(n)]
            return [
                RawRequest(
                    "POST", PATH, QUERY, [(k.lower().encode(), v.encode()) for k, v in h.items()], BODY
                )
                for h in signed
            ]

        cpu_ctx = VerifyContext("npu-worker", verifier_keys, matrix, AcceptEveryNonce())

        def distinct_bodies(n: int) -> list[RawRequest]:
            """Each with its own body, hence its own Content-Digest: the verifier's digest-parse cache, which
            serves repeated equal bodies, is not what this row measures."""
            out = []
            for i in range(n):
                body = BODY[:-10] + f"{i:08d}".encode() + b'"}'
                headers = sign_request(
                    key=pair_key,
                    key_id=key_id,
                    method="POST",
                    raw_path=PATH,
                    query_string=QUERY,
                    body=body,
                    created=int(time.time()),
                    nonce=new_nonce(),
                ).as_dict()
                pairs = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
                out.append(RawRequest("POST", PATH, QUERY, pairs, body))
            return out

        cpu_batch = itertools.cycle(distinct_bodies(count))

        async def verify_cpu() -> float:
            return await per_await_us(lambda: verify_request(next(cpu_batch), cpu_ctx), count)

        verify_cpu_us = asyncio.run(verify_cpu())

        with running_redis(Path(tmp) / "redis") as server:

            async def verify_redis() -> float:
                redis = create_redis(RedisConfig(url=server.url))
                ctx = VerifyContext("npu-worker", verifier_keys, matrix, NonceStore(redis, 600))
                batches = [iter(requests(count)) for _ in range(5)]
                results = []
                try:
                    for batch in batches:
                        started = time.perf_counter()
                        for request in batch:
                            decision = await verify_request(request, ctx)
                            assert decision.status == 200, decision
                        results.append((time.perf_counter() - started) / count * 1e6)
                finally:
                    await redis.aclose(close_connection_pool=True)
                return min(results)

            verify_redis_us = asyncio.run(verify_redis())

            async def verify_redis_concurrent(concurrency: int = 16) -> float:
                """Wall time per request with `concurrency` requests in flight, as a busy service has."""
                redis = create_redis(RedisConfig(url=server.url))
                ctx = VerifyContext("npu-worker", verifier_keys, matrix, NonceStore(redis, 600))
                batches = [requests(count) for _ in range(5)]
                results = []

                async def worker(pending: Iterator[RawRequest]) -> None:
                    for request in pending:
                        decision = await verify_request(request, ctx)
                        assert decision.status == 200, decision

                try:
                    for batch in batches:
                        pending = iter(batch)
                        started = time.perf_counter()
                        await asyncio.gather(*(worker(pending) for _ in range(concurrency)))
                        results.append((time.perf_counter() - started) / count * 1e6)
                finally:
                    await redis.aclose(close_connection_pool=True)
                return min(results)

            verify_concurrent_us = asyncio.run(verify_redis_concurrent())

        headers = sign()
        library_request = httpx.Request(
            "POST",
            "http://npu-worker:8081" + PATH.decode() + "?" + QUERY.decode(),
            headers=headers,
            content=BODY,
        )
        library = HTTPMessageVerifier(
            signature_algorithm=HMAC_SHA256,
            key_resolver=MappingKeyResolver(public_keys={str(key_id): pair_key}, private_keys={}),
        )

        def library_verify() -> object:
            return library.verify(library_request, body=BODY, require_components=COVERED_COMPONENTS)

        library_verify()  # proves it accepts our request before timing it
        library_us = per_call_us(library_verify, count)

    rows = [
        ("sign (1 KiB body)", sign_us),
        ("verify, CPU part (no Redis)", verify_cpu_us),
        ("verify incl. Redis nonce SET NX", verify_redis_us),
        ("same, 16 requests in flight", verify_concurrent_us),
        ("http-message-signatures verify", library_us),
    ]
    print(f"service-auth signing benchmark: {count} requests per round, best of 5, body {len(BODY)} bytes")
    for name, value in rows:
        print(f"  {name:<34} {value:8.1f} us/request")
    print(f"  ours (CPU part) / library ratio    {verify_cpu_us / library_us:8.2f}")
    print(f"  ours (with Redis) / library ratio  {verify_redis_us / library_us:8.2f}")
    print(f"  (median of the rows: {statistics.median(v for _, v in rows):.1f} us)")


if __name__ == "__main__":
    main()
