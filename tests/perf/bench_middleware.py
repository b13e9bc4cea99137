"""Benchmark: requests/s of a trivial FastAPI route with and without ServiceAuthEnforcementMiddleware.

Run: python tests/perf/bench_middleware.py [--requests N] [--concurrency C] [--rounds R]
Each variant runs in its own uvicorn process on loopback (uvloop/httptools when installed), with a real
redis-server for the nonce store. The client sends identical, pre-signed POSTs (1 KiB body, one nonce each)
over C keep-alive connections for a fixed count, so the only difference is the middleware, and the client
(raw asyncio streams, no signing on the clock) is not the bottleneck. The variants
alternate for R rounds; the best round of each is compared (the least disturbed by other load). On Linux it
also reports the CPU time each server process used per request (from /proc), which other load on a shared
machine disturbs far less than requests/s. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import time
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


def _trivial_app() -> Any:
    """A FastAPI app (the services are FastAPI apps) with one trivial route that reads the body."""
    app = FastAPI()

    @app.post("/api/process")
    async def process(request: Request) -> dict[str, int]:
        return {"received": len(await request.body())}

    return app


def _serve(variant: str, port: int, keys_dir: str, redis_url: str, audit_log: str) -> None:
    import uvicorn

    from autobot.config import ListenConfig, RedisConfig, SecurityConfig, ServiceConfig
    from autobot.middleware.service_auth_enforcement import ServiceAuthEnforcementMiddleware

    app = _trivial_app()
    if variant == "enforcement":
        config = ServiceConfig(
            service_id="npu-worker",
            listen=ListenConfig(port=port),
            redis=RedisConfig(url=redis_url),
            security=SecurityConfig(
                keys_dir=Path(keys_dir), matrix_file=MATRIX_FILE, audit_log=Path(audit_log)
            ),
        )
        app = ServiceAuthEnforcementMiddleware(app, config)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", access_log=False, lifespan="on")


def _wait_listening(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    spawn = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp, running_redis(Path(tmp) / "redis") as redis:
        ring = controller_keyring()
        npu_dir = write_key_dir(Path(tmp) / "npu", "npu-worker", ring)
        signer = Keyring.load_dir(write_key_dir(Path(tmp) / "main", "main-backend", ring), "main-backend")
        audit_log = Path(tmp) / "audit.log"
        ports = {"plain": free_port(), "enforcement": free_port()}
        servers = {
            variant: spawn.Process(
                target=_serve, args=(variant, port, str(npu_dir), redis.url, str(audit_log)), daemon=True
            )
            for variant, port in ports.items()
        }
        for process in servers.values():
            process.start()
        try:
            for port in ports.values():
                _wait_listening(port)
            results: dict[str, list[tuple[float, list[float]]]] = {v: [] for v in ports}
            cpu_us: dict[str, list[float]] = {v: [] for v in ports}

            async def run_all() -> None:
                for port in ports.values():  # warm-up: connections, caches, lazy component build
                    await _load(port, _presigned(signer, port, 300), args.concurrency)
                for _ in range(args.rounds):
                    for variant, port in ports.items():
                        batch = _presigned(signer, port, args.requests)
                        pid = servers[variant].pid
                        before = _cpu_seconds(pid) if pid is not None else None
                        results[variant].append(await _load(port, batch, args.concurrency))
                        after = _cpu_seconds(pid) if pid is not None else None
                        if before is not None and after is not None:
                            cpu_us[variant].append((after - before) / args.requests * 1e6)

            asyncio.run(run_all())
        finally:
            for process in servers.values():
                process.terminate()
                process.join(10)
        audit_lines = len(audit_log.read_text().splitlines()) if audit_log.exists() else 0

    print(
        f"service-auth middleware benchmark: POST 1 KiB, {args.requests} requests x {args.rounds} rounds, "
        f"{args.concurrency} concurrent, uvicorn on loopback"
    )
    best: dict[str, float] = {}
    for variant, rounds in results.items():
        rps = [r for r, _ in rounds]
        best[variant] = max(rps)
        lat = sorted(x for _, latencies in rounds for x in latencies)
        p50 = statistics.median(lat) * 1000
        p99 = lat[int(len(lat) * 0.99) - 1] * 1000
        print(
            f"  {variant:<12} best {max(rps):7.0f} req/s  (rounds: {', '.join(f'{x:.0f}' for x in rps)})"
            f"  p50 {p50:.2f} ms  p99 {p99:.2f} ms"
        )
    if all(cpu_us.values()):
        cpu = {variant: min(values) for variant, values in cpu_us.items()}
        print(
            f"  server CPU per request (best round): plain {cpu['plain']:.0f} us, "
            f"enforcement {cpu['enforcement']:.0f} us, added {cpu['enforcement'] - cpu['plain']:.0f} us "
            f"({(cpu['enforcement'] / cpu['plain'] - 1) * 100:.0f}%)"
        )
    overhead = (best["plain"] / best["enforcement"] - 1) * 100
    added_us = (1 / best["enforcement"] - 1 / best["plain"]) * 1e6
    print(f"  enforcement overhead: {overhead:.1f}% more time per request ({added_us:.0f} us), best rounds")
    print(f"  audit lines written by the enforcement server: {audit_lines}")


if __name__ == "__main__":
    main()
