"""Benchmark: POST /api/chat under 50 concurrent clients, async history vs the synchronous-Redis baseline.

    python tests/perf/bench_chat.py [--clients 50] [--requests 30] [--think-ms 200] [--rounds 20]

Starts a real redis-server on a free loopback port, then for each variant a main-backend under uvicorn in
its own process (offline LLM provider, fresh data directory, flushed Redis), and drives it with httpx
clients from this process. Reports client-side latency and the server's event-loop lag, measured inside
the server by a perf_counter sleep-drift probe that this file's wrapper app adds (with a debug route that
exists only here, never in src/).

Variants:
- async:          the real app, autobot.services.main_backend.create_app.
- sync-baseline:  the same app with its chat history swapped for one that sends the same Redis commands
                  through the synchronous redis client inside the async handler: the plan's root cause.
Prints numbers only; it asserts nothing about timing. Bounded: clients x requests, and a time limit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import yaml  # noqa: E402
from tests.support.redis_server import free_port, start_redis  # noqa: E402

VARIANTS = ("async", "sync-baseline")
LAG_INTERVAL_S = 0.005
TIME_LIMIT_S = 120.0


# -- server side: the wrapper app (runs in the uvicorn subprocess) -------------------------------------


class LagProbe:
    """Sleeps `interval` again and again and records how late the loop woke it up (seconds)."""

    def __init__(self, interval_s: float = LAG_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.samples: list[float] = []

    async def run(self) -> None:
        while True:
            start = time.perf_counter()
            await asyncio.sleep(self.interval_s)
            self.samples.append(time.perf_counter() - start - self.interval_s)


class SyncRedisHistory:
    """The root cause, reproduced for comparison: exactly the commands of RedisChatHistory, sent through
    the blocking redis.Redis client from inside coroutines, so every round trip stalls the event loop."""

    def __init__(self, url: str, *, max_messages: int, ttl_s: int) -> None:
        import redis  # the synchronous client: only here, in the benchmark's baseline

        from autobot.chat.history import history_key, meta_key

        self._redis = redis.Redis.from_url(url)
        self._key, self._meta = history_key, meta_key
        self.max_messages = max_messages
        self.ttl_s = ttl_s

    async def append(
        self, session_id: str, entries: Sequence[Any], *, model: str | None = None, window: int = 0
    ) -> Any:
        from autobot.chat.entries import ChatEntry
        from autobot.chat.history import AppendResult

        key, meta = self._key(session_id), self._meta(session_id)
        pipe = self._redis.pipeline(transaction=True)
        pipe.rpush(key, *(e.to_json() for e in entries))
        pipe.ltrim(key, -self.max_messages, -1)
        pipe.hincrby(meta, "seq", len(entries))
        if model is not None:
            pipe.hset(meta, "model", model)
        pipe.expire(key, self.ttl_s)
        pipe.expire(meta, self.ttl_s)
        if window > 0:
            pipe.lrange(key, -window, -1)
        results = pipe.execute()  # blocks the event loop for the whole round trip
        read = [ChatEntry.from_json(item) for item in results[-1]] if window > 0 else []
        return AppendResult(missed=int(results[0]) == len(entries), window=read)

    async def prepend(self, session_id: str, older: Sequence[Any], *, total: int) -> None:
        key, meta = self._key(session_id), self._meta(session_id)
        batch = list(older)[-self.max_messages :]
        pipe = self._redis.pipeline(transaction=True)
        if batch:
            pipe.lpush(key, *(e.to_json() for e in reversed(batch)))
            pipe.ltrim(key, -self.max_messages, -1)
        pipe.hset(meta, "seq", total)
        pipe.expire(key, self.ttl_s)
        pipe.expire(meta, self.ttl_s)
        pipe.execute()

    async def window(self, session_id: str, count: int) -> list[Any]:
        from autobot.chat.entries import ChatEntry

        raw = self._redis.lrange(self._key(session_id), -count, -1)
        return [ChatEntry.from_json(item) for item in raw]


def build_app(variant: str, config_path: str) -> Any:
    from fastapi import FastAPI

    from autobot.config import load_config
    from autobot.services.main_backend import BackendState, create_app

    config = load_config(config_path)
    app: FastAPI = create_app(config)
    probe = LagProbe()
    inner_lifespan = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(a: FastAPI) -> AsyncIterator[None]:
        async with inner_lifespan(a) as state:
            backend = a.state.backend
            assert isinstance(backend, BackendState)
            if variant == "sync-baseline":
                current = backend.chat.history
                backend.chat.history = SyncRedisHistory(  # type: ignore[assignment]
                    config.redis.url, max_messages=current.max_messages, ttl_s=current.ttl_s
                )
            task = asyncio.create_task(probe.run())
            try:
                yield state
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app.router.lifespan_context = lifespan

    async def lag() -> dict[str, Any]:
        return {"samples": probe.samples}

    async def lag_reset() -> dict[str, Any]:
        probe.samples.clear()
        return {"reset": True}

    app.add_api_route("/__bench/lag", lag, methods=["GET"])
    app.add_api_route("/__bench/lag/reset", lag_reset, methods=["POST"])
    return app


def serve(variant: str, config_path: str, port: int) -> None:
    import uvicorn

    uvicorn.run(
        build_app(variant, config_path), host="127.0.0.1", port=port, log_level="warning", access_log=False
    )


# -- client side: the driver ---------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def write_config(root: Path, redis_url: str) -> Path:
    config = {
        "service_id": "main-backend",
        "listen": {"host": "127.0.0.1", "port": 8001},
        "redis": {"url": redis_url, "max_connections": 64},
        "llm": {"provider": "offline"},
        "backend": {
            "database": str(root / "data" / "conversation_files.db"),
            "files_dir": str(root / "data" / "files"),
            "transcripts_dir": str(root / "data" / "transcripts"),
        },
    }
    path = root / "config.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def wait_healthy(base_url: str, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(base_url + "/api/ready", timeout=1.0).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"server on {base_url} not ready within {timeout_s}s")


async def drive(base_url: str, variant: str, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Warm up, then measure each load shape; the server's lag samples are reset before each shape."""
    clients = args.clients
    deadline = time.monotonic() + TIME_LIMIT_S
    rng = random.Random(7)
    results: dict[str, dict[str, Any]] = {}

    async with contextlib.AsyncExitStack() as stack:
        # One client (one connection) per simulated user, as 50 browsers would be; a single shared httpx
        # pool of 50 connections costs the load generator several ms of CPU per request on this machine.
        users = [
            await stack.enter_async_context(
                httpx.AsyncClient(base_url=base_url, limits=httpx.Limits(max_connections=1), timeout=30.0)
            )
            for _ in range(clients)
        ]
        http = await stack.enter_async_context(httpx.AsyncClient(base_url=base_url, timeout=30.0))
        latencies: list[float] = []
        errors: dict[str, int] = {}

        async def one(index: int, turn: int, record: bool = True) -> None:
            body = {
                "message": f"client {index} turn {turn}: how is the cluster doing?",
                "session_id": f"c{index}",
            }
            start = time.perf_counter()
            try:
                response = await users[index].post("/api/chat", json=body)
                status = str(response.status_code)
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            elapsed = time.perf_counter() - start
            if not record:
                return
            if status == "200":
                latencies.append(elapsed)
            else:
                errors[status] = errors.get(status, 0) + 1

        async def staggered_client(index: int) -> None:
            # A chat user: sends, reads the reply, thinks, sends again. Start times are spread out.
            await asyncio.sleep(rng.uniform(0, args.think_ms / 1000))
            for turn in range(args.requests):
                if time.monotonic() > deadline:
                    return
                await one(index, turn)
                await asyncio.sleep(args.think_ms / 1000 * rng.uniform(0.5, 1.5))

        async def measure(shape: str, body: Any) -> None:
            latencies.clear()
            errors.clear()
            await http.post("/__bench/lag/reset")
            started = time.perf_counter()
            await body()
            wall = time.perf_counter() - started
            lag = (await http.get("/__bench/lag")).json()["samples"]
            results[shape] = {"latencies": list(latencies), "errors": dict(errors), "wall": wall, "lag": lag}

        async def staggered() -> None:
            await asyncio.gather(*(staggered_client(i) for i in range(clients)))

        async def burst() -> None:
            # All clients at the same instant, round after round: the plan's "50 concurrent chat requests".
            for turn in range(args.rounds):
                if time.monotonic() > deadline:
                    return
                await asyncio.gather(*(one(i, 1000 + turn) for i in range(clients)))
                await asyncio.sleep(0.05)

        await asyncio.gather(*(one(i, -w, record=False) for i in range(clients) for w in range(args.warmup)))
        await measure("staggered", staggered)
        await measure("burst", burst)
    return results


def run_variant(
    variant: str, root: Path, redis_url: str, args: argparse.Namespace
) -> dict[str, dict[str, Any]]:
    workdir = root / variant
    workdir.mkdir()
    config = write_config(workdir, redis_url)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable,
        __file__,
        "serve",
        "--variant",
        variant,
        "--config",
        str(config),
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        wait_healthy(base_url, proc)
        return asyncio.run(drive(base_url, variant, args))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def summarise(result: dict[str, Any]) -> dict[str, float]:
    ms = [x * 1000 for x in result["latencies"]]
    lag = [x * 1000 for x in result["lag"]]
    return {
        "ok": len(ms),
        "errors": sum(result["errors"].values()),
        "rps": len(ms) / result["wall"] if result["wall"] else float("nan"),
        "p50": percentile(ms, 0.50),
        "p95": percentile(ms, 0.95),
        "p99": percentile(ms, 0.99),
        "max": max(ms, default=float("nan")),
        "lag_p50": percentile(lag, 0.50),
        "lag_p99": percentile(lag, 0.99),
        "lag_max": max(lag, default=float("nan")),
        "lag_n": len(lag),
    }


def flush_all(url: str) -> None:
    import redis  # the driver is not the server: a blocking client is fine here

    client = redis.Redis.from_url(url)
    try:
        client.flushall()
    finally:
        client.close()


def main_bench(args: argparse.Namespace) -> None:
    version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=True).stdout
    print(
        f"bench_chat: {args.clients} clients, POST /api/chat, offline LLM provider, uvicorn 1 worker, "
        f"redis-server {version.split()[2].removeprefix('v=')} on loopback, {os.cpu_count()} CPUs, "
        f"load average before start {os.getloadavg()[0]:.2f}"
    )
    print(
        f"  staggered: each client sends {args.requests} requests, thinking {args.think_ms} ms (x0.5-1.5) "
        f"between reply and next message; burst: {args.rounds} rounds of {args.clients} simultaneous requests"
    )
    rows: dict[tuple[str, str], dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-chat-") as tmp:
        root = Path(tmp)
        server = start_redis(root / "redis")
        try:
            for variant in VARIANTS:
                flush_all(server.url)
                for shape, result in run_variant(variant, root, server.url, args).items():
                    rows[(variant, shape)] = summarise(result)
                    if result["errors"]:
                        print(f"  {variant}/{shape}: errors by status: {json.dumps(result['errors'])}")
        finally:
            server.stop()
    print(
        f"{'variant':<14} {'load':<9} {'ok':>5} {'err':>4} {'req/s':>6} {'p50':>7} {'p95':>7} {'p99':>7}"
        f" {'max':>7} {'lag p50':>8} {'lag p99':>8} {'lag max':>8}"
    )
    for (variant, shape), r in rows.items():
        print(
            f"{variant:<14} {shape:<9} {r['ok']:>5.0f} {r['errors']:>4.0f} {r['rps']:>6.0f} {r['p50']:>7.1f}"
            f" {r['p95']:>7.1f} {r['p99']:>7.1f} {r['max']:>7.1f} {r['lag_p50']:>8.2f} {r['lag_p99']:>8.2f}"
            f" {r['lag_max']:>8.2f}"
        )
    print(
        f"(latency and event-loop lag in ms; lag: perf_counter drift of a {LAG_INTERVAL_S * 1000:g} ms sleep)"
    )
    for shape in ("staggered", "burst"):
        a, s = rows[("async", shape)], rows[("sync-baseline", shape)]
        print(
            f"ratio sync-baseline/async, {shape}: p50 {s['p50'] / a['p50']:.2f}x, "
            f"p99 {s['p99'] / a['p99']:.2f}x, lag p99 {s['lag_p99'] / a['lag_p99']:.2f}x, "
            f"lag max {s['lag_max'] / a['lag_max']:.2f}x"
        )
    a = rows[("async", "staggered")]
    print(
        f"async, staggered, vs targets: p99 {a['p99']:.1f} ms (required < 100, aim < 25); "
        f"lag p99 {a['lag_p99']:.2f} ms (required < 10, aim < 5)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command")
    srv = sub.add_parser("serve", help="internal: run one variant under uvicorn")
    srv.add_argument("--variant", choices=VARIANTS, required=True)
    srv.add_argument("--config", required=True)
    srv.add_argument("--port", type=int, required=True)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=30, help="staggered: measured requests per client")
    parser.add_argument("--think-ms", type=int, default=200, help="staggered: mean pause between requests")
    parser.add_argument("--rounds", type=int, default=20, help="burst: rounds of simultaneous requests")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured requests per client first")
    args = parser.parse_args()
    if args.command == "serve":
        serve(args.variant, args.config, args.port)
    else:
        main_bench(args)


if __name__ == "__main__":
    main()
