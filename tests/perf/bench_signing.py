"""Benchmark: cost of signing and verifying one request (1 KiB body), before/after in one run, and ours vs
`http-message-signatures`.

Run: python tests/perf/bench_signing.py [--count N] [--runs R] [--base REV]

Prints microseconds per request for: sign; verify (CPU part: every check except the Redis nonce write);
verify including the nonce SET against a real local redis-server, one request at a time and with 16 in
flight (wall time per request); the independent library verifying the same request (signature and
Content-Digest). Each of our rows is measured for this working tree ("after") and for git revision REV
("before", default: the commit this branch started from, from a `git archive` of its src/ and matrix), each
in its own process, alternating before/after R times (default 2); the best of each is printed. The load
average is printed too. Not a test: numbers only.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.perf.bench_middleware import DEFAULT_BASE, MATRIX_PATH, base_tree  # noqa: E402

BODY = (b'{"task":"embed","text":"' + b"x" * 1024)[:1022] + b'"}'
PATH = b"/api/process"
QUERY = b"mode=fast&trace=a%20b"
ROWS = (
    ("sign", "sign (1 KiB body)"),
    ("verify_cpu", "verify, CPU part (no Redis)"),
    ("verify_redis", "verify incl. Redis nonce SET"),
    ("verify_16", "same, 16 requests in flight"),
)


class AcceptEveryNonce:
    """Benchmark-only stand-in for the Redis nonce store, to isolate the verifier's CPU cost."""

    async def remember(self, callee: str, caller: str, nonce: str) -> bool:
        return True


def signed_headers(key: bytes, key_id: Any, body: bytes) -> dict[str, str]:
    """The signing headers of our benchmark request, signed now with a fresh nonce (`autobot` as imported)."""
    from autobot.security.signing import new_nonce, sign_request

    return sign_request(
        key=key,
        key_id=key_id,
        method="POST",
        raw_path=PATH,
        query_string=QUERY,
        body=body,
        created=int(time.time()),
        nonce=new_nonce(),
    ).as_dict()


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


def measure(count: int, matrix_file: Path) -> dict[str, float]:
    """Our rows, with whatever `autobot` this process imports (PYTHONPATH picks the tree)."""
    from tests.security.auth_support import controller_keyring, write_key_dir
    from tests.support.redis_server import running_redis

    from autobot.config import RedisConfig
    from autobot.redis_pool import create_redis
    from autobot.security.keyring import Keyring
    from autobot.security.matrix import Matrix
    from autobot.security.replay import NonceStore
    from autobot.security.verify import RawRequest, VerifyContext, verify_request

    with tempfile.TemporaryDirectory() as tmp:
        ring = controller_keyring()
        signer = Keyring.load_dir(write_key_dir(Path(tmp) / "main", "main-backend", ring), "main-backend")
        verifier_keys = Keyring.load_dir(write_key_dir(Path(tmp) / "npu", "npu-worker", ring), "npu-worker")
        key_id, pair_key = signer.signing_key("npu-worker")
        matrix = Matrix.load(matrix_file, "npu-worker")

        def sign(body: bytes = BODY) -> dict[str, str]:
            return signed_headers(pair_key, key_id, body)

        def requests(n: int, distinct_bodies: bool = False) -> list[RawRequest]:
            """Pre-signed, each with its own nonce (and, if asked, its own body and so its own digest)."""
            out = []
            for i in range(n):
                body = BODY[:-10] + f"{i:08d}".encode() + b'"}' if distinct_bodies else BODY
                pairs = [(k.lower().encode(), v.encode()) for k, v in sign(body).items()]
                out.append(RawRequest("POST", PATH, QUERY, pairs, body))
            return out

        rows = {"sign": per_call_us(sign, count)}
        cpu_ctx = VerifyContext("npu-worker", verifier_keys, matrix, AcceptEveryNonce())
        cpu_batch = itertools.cycle(requests(count, distinct_bodies=True))
        rows["verify_cpu"] = asyncio.run(
            per_await_us(lambda: verify_request(next(cpu_batch), cpu_ctx), count)
        )

        with running_redis(Path(tmp) / "redis") as server:

            async def verify_redis(concurrency: int) -> float:
                """Wall time per request with `concurrency` requests in flight; best of 5 batches."""
                redis = create_redis(RedisConfig(url=server.url))
                store = NonceStore(redis, 600)
                ctx = VerifyContext("npu-worker", verifier_keys, matrix, store)
                results = []

                async def worker(pending: Iterator[RawRequest]) -> None:
                    for request in pending:
                        decision = await verify_request(request, ctx)
                        assert decision.status == 200, decision

                try:
                    for batch in [requests(count) for _ in range(5)]:
                        pending = iter(batch)
                        started = time.perf_counter()
                        await asyncio.gather(*(worker(pending) for _ in range(concurrency)))
                        results.append((time.perf_counter() - started) / count * 1e6)
                finally:
                    if hasattr(store, "aclose"):
                        await store.aclose()
                    await redis.aclose(close_connection_pool=True)
                return min(results)

            rows["verify_redis"] = asyncio.run(verify_redis(1))
            rows["verify_16"] = asyncio.run(verify_redis(16))
    return rows


def library_us(count: int) -> float:
    """http-message-signatures verifying one of our requests (signature and Content-Digest)."""
    import httpx
    from http_message_signatures import HTTPMessageVerifier, MappingKeyResolver
    from http_message_signatures.algorithms import HMAC_SHA256
    from tests.security.auth_support import controller_keyring, write_key_dir

    from autobot.security.canonical import COVERED_COMPONENTS
    from autobot.security.keyring import Keyring

    with tempfile.TemporaryDirectory() as tmp:
        signer = Keyring.load_dir(
            write_key_dir(Path(tmp) / "main", "main-backend", controller_keyring()), "main-backend"
        )
    key_id, pair_key = signer.signing_key("npu-worker")
    headers = signed_headers(pair_key, key_id, BODY)
    request = httpx.Request(
        "POST", "http://npu-worker:8081" + PATH.decode() + "?" + QUERY.decode(), headers=headers, content=BODY
    )
    library = HTTPMessageVerifier(
        signature_algorithm=HMAC_SHA256,
        key_resolver=MappingKeyResolver(public_keys={str(key_id): pair_key}, private_keys={}),
    )

    def verify() -> object:
        return library.verify(request, body=BODY, require_components=COVERED_COMPONENTS)

    verify()  # proves it accepts our request before timing it
    return per_call_us(verify, count)


def _measure_in(src: Path, matrix: Path, count: int) -> dict[str, float]:
    output = subprocess.run(
        [sys.executable, __file__, "--measure", str(matrix), "--count", str(count)],
        env={**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{ROOT}"},
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rows: dict[str, float] = json.loads(output.splitlines()[-1])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=2, help="before/after pairs, alternating")
    parser.add_argument("--base", default=DEFAULT_BASE, help="git revision measured as 'before'")
    parser.add_argument("--measure", metavar="MATRIX", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.count, Path(args.measure))))
        return

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"after": (ROOT / "src", ROOT / MATRIX_PATH)}
        old = base_tree(args.base, Path(tmp))
        if old is not None:
            trees = {"before": (old / "src", old / MATRIX_PATH), **trees}
        best: dict[str, dict[str, float]] = {name: {} for name in trees}
        for _ in range(args.runs):
            for name, (src, matrix) in trees.items():
                for row, value in _measure_in(src, matrix, args.count).items():
                    best[name][row] = min(value, best[name].get(row, value))
    library = library_us(args.count)

    load_after = os.getloadavg()
    print(
        f"service-auth signing benchmark: {args.count} requests per round, best of 5 rounds x {args.runs} "
        f"runs, body {len(BODY)} bytes; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after"
    )
    if "before" in best:
        print(f"  {'us/request':<34} {'before@' + args.base:>16} {'after':>10} {'after/before':>13}")
        for key, label in ROWS:
            before, after = best["before"][key], best["after"][key]
            print(f"  {label:<34} {before:16.1f} {after:10.1f} {after / before:13.2f}")
    else:
        print(f"  (git archive of {args.base} failed: no 'before' column)")
        for key, label in ROWS:
            print(f"  {label:<34} {best['after'][key]:10.1f}")
    print(f"  {'http-message-signatures verify':<34} {library:16.1f}")
    after = best["after"]
    print(f"  ours (CPU part) / library ratio    {after['verify_cpu'] / library:8.2f}")
    print(f"  ours (with Redis) / library ratio  {after['verify_redis'] / library:8.2f}")


if __name__ == "__main__":
    main()
