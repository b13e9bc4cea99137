"""Benchmark: what ServiceAuthEnforcementMiddleware adds to a trivial FastAPI route, before/after in one run.

Run: python tests/perf/bench_middleware.py [--requests N] [--concurrency C] [--rounds R] [--base REV]

Variants, each in its own uvicorn process on loopback (uvloop/httptools when installed), one real
redis-server for the nonce stores:
- plain: the app alone (the baseline);
- enforcement@REV: the middleware as it was at git revision REV (default: the commit this branch started
  from), run from a `git archive` of that revision's src/ and matrix, so "before" is measured in the same
  run, on the same machine state, as "after" (skipped when git cannot produce it);
- enforcement: the middleware of this working tree.
The client sends identical, pre-signed POSTs (1 KiB body, one nonce each) over C keep-alive connections for
a fixed count, so the only difference is the middleware, and the client (raw asyncio streams, no signing on
the clock) is not the bottleneck. Variants alternate for R rounds; the best round of each is compared (the
least disturbed by other load). On Linux it also reports the CPU time each server process used per request
(from /proc), which other load on a shared machine disturbs far less than requests/s; the CPU the Redis
server spends is listed apart. The load average is printed before and after. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from fastapi import FastAPI, Request  # noqa: E402
from tests.security.auth_support import MATRIX_FILE, controller_keyring, write_key_dir  # noqa: E402
from tests.support.redis_server import free_port, running_redis  # noqa: E402

from autobot.security.keyring import Keyring  # noqa: E402
from autobot.security.signing import new_nonce, sign_request  # noqa: E402

BODY = b"x" * 1024
DEFAULT_BASE = "3582c45"  # main when issue 13's service-auth work started
MATRIX_PATH = "inventory/group_vars/all/services.yml"


def _trivial_app() -> Any:
    """A FastAPI app (the services are FastAPI apps) with one trivial route that reads the body."""
    app = FastAPI()

    @app.post("/api/process")
    async def process(request: Request) -> dict[str, int]:
        return {"received": len(await request.body())}

    return app


def _serve(variant: str, port: int, keys_dir: str, redis_url: str, audit_log: str, matrix: str) -> None:
    """The server process of one variant (`--serve`); its `autobot` is whatever PYTHONPATH chose."""
    import uvicorn

    from autobot.config import ListenConfig, RedisConfig, SecurityConfig, ServiceConfig
    from autobot.middleware.service_auth_enforcement import ServiceAuthEnforcementMiddleware

    app = _trivial_app()
    if variant != "plain":
        config = ServiceConfig(
            service_id="npu-worker",
            listen=ListenConfig(port=port),
            redis=RedisConfig(url=redis_url),
            security=SecurityConfig(
                keys_dir=Path(keys_dir), matrix_file=Path(matrix), audit_log=Path(audit_log)
            ),
        )
        app = ServiceAuthEnforcementMiddleware(app, config)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", access_log=False, lifespan="on")


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not start")


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux /proc), or None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _presigned(signer: Keyring, port: int, count: int) -> list[bytes]:
    """Complete HTTP/1.1 requests, each signed with its own nonce, built before the clock starts."""
    key_id, key = signer.signing_key("npu-worker")
    now = int(time.time())
    requests = []
    for _ in range(count):
        headers = sign_request(
            key=key,
            key_id=key_id,
            method="POST",
            raw_path=b"/api/process",
            query_string=b"",
            body=BODY,
            created=now,
            nonce=new_nonce(),
        ).as_dict()
        lines = ["POST /api/process HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Content-Length: {len(BODY)}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        requests.append(("\r\n".join(lines) + "\r\n\r\n").encode() + BODY)
    return requests


async def _load(port: int, requests: list[bytes], concurrency: int) -> tuple[float, list[float]]:
    """C keep-alive connections, each sending its share one request at a time (bounded load)."""
    latencies: list[float] = []
    pending = iter(requests)

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for request in pending:
                started = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - started)
                if status != 200:
                    raise RuntimeError(f"unexpected status {status}")
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return len(requests) / (time.perf_counter() - started), latencies


def base_tree(base: str, into: Path) -> Path | None:
    """src/ and the matrix of git revision `base`, unpacked under `into`; None if git cannot give them."""
    try:
        data = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", base, "src", MATRIX_PATH],
            check=True,
            capture_output=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    with tarfile.open(fileobj=BytesIO(data)) as archive:
        archive.extractall(into, filter="data")
    return into


@dataclass
class Variant:
    name: str
    pythonpath: str
    matrix: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    rounds: list[tuple[float, list[float]]] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--base", default=DEFAULT_BASE, help="git revision measured as 'before'")
    parser.add_argument("--serve", nargs=6, metavar="ARG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        variant, port, keys_dir, redis_url, audit_log, matrix = args.serve
        _serve(variant, int(port), keys_dir, redis_url, audit_log, matrix)
        return

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp, running_redis(Path(tmp) / "redis") as redis:
        ring = controller_keyring()
        npu_dir = write_key_dir(Path(tmp) / "npu", "npu-worker", ring)
        signer = Keyring.load_dir(write_key_dir(Path(tmp) / "main", "main-backend", ring), "main-backend")
        here = str(ROOT / "src") + os.pathsep + str(ROOT)
        variants = [Variant("plain", here, MATRIX_FILE)]
        old = base_tree(args.base, Path(tmp) / "base")
        if old is not None:
            old_path = str(old / "src") + os.pathsep + str(ROOT)
            variants.append(Variant(f"enforcement@{args.base}", old_path, old / MATRIX_PATH))
        else:
            print(f"(git archive of {args.base} failed: no 'before' variant)")
        variants.append(Variant("enforcement", here, MATRIX_FILE))
        for variant in variants:
            audit_log = Path(tmp) / f"audit-{variant.name}.log"
            serve = [
                variant.name,
                str(variant.port),
                str(npu_dir),
                redis.url,
                str(audit_log),
                str(variant.matrix),
            ]
            variant.proc = subprocess.Popen(
                [sys.executable, __file__, "--serve", *serve],
                env={**os.environ, "PYTHONPATH": variant.pythonpath},
            )
        try:
            for variant in variants:
                assert variant.proc is not None
                _wait_listening(variant.port, variant.proc)
            redis_cpu: list[float] = []

            async def run_all() -> None:
                for variant in variants:  # warm-up: connections, caches, lazy component build
                    await _load(variant.port, _presigned(signer, variant.port, 300), args.concurrency)
                for _ in range(args.rounds):
                    for variant in variants:
                        assert variant.proc is not None
                        batch = _presigned(signer, variant.port, args.requests)
                        before = _cpu_seconds(variant.proc.pid)
                        redis_before = _cpu_seconds(redis.process.pid)
                        variant.rounds.append(await _load(variant.port, batch, args.concurrency))
                        after = _cpu_seconds(variant.proc.pid)
                        redis_after = _cpu_seconds(redis.process.pid)
                        if before is not None and after is not None:
                            variant.cpu_us.append((after - before) / args.requests * 1e6)
                        if redis_before is not None and redis_after is not None and variant.name != "plain":
                            redis_cpu.append((redis_after - redis_before) / args.requests * 1e6)

            asyncio.run(run_all())
        finally:
            for variant in variants:
                if variant.proc is not None:
                    variant.proc.terminate()
                    variant.proc.wait(10)

    print(
        f"service-auth middleware benchmark: POST 1 KiB, {args.requests} requests x {args.rounds} rounds, "
        f"{args.concurrency} concurrent, uvicorn on loopback; load average {load_before[0]:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after"
    )
    best = {v.name: max(r for r, _ in v.rounds) for v in variants}
    for variant in variants:
        rps = [r for r, _ in variant.rounds]
        lat = sorted(x for _, latencies in variant.rounds for x in latencies)
        p50 = statistics.median(lat) * 1000
        p99 = lat[int(len(lat) * 0.99) - 1] * 1000
        cpu = f"  server CPU {min(variant.cpu_us):4.0f} us/request" if variant.cpu_us else ""
        print(
            f"  {variant.name:<22} best {best[variant.name]:7.0f} req/s  "
            f"(rounds: {', '.join(f'{x:.0f}' for x in rps)})  p50 {p50:.2f} ms  p99 {p99:.2f} ms{cpu}"
        )
    plain = variants[0]
    for variant in variants[1:]:
        added_us = (1 / best[variant.name] - 1 / best["plain"]) * 1e6
        cpu_added = (
            f"; server CPU +{min(variant.cpu_us) - min(plain.cpu_us):.0f} us"
            if variant.cpu_us and plain.cpu_us
            else ""
        )
        print(f"  {variant.name:<22} adds {added_us:5.0f} us per request (best rounds){cpu_added}")
    if redis_cpu:
        print(f"  (redis-server CPU during the middleware rounds: {min(redis_cpu):.0f} us/request at best)")


if __name__ == "__main__":
    main()
