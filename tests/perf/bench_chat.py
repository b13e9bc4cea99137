"""Benchmark: POST /api/chat under 50 concurrent clients, async history vs the synchronous-Redis baseline.

    python tests/perf/bench_chat.py [--clients 50] [--requests 30] [--think-ms 500] [--rounds 20]
                                    [--redis-delay-ms 0] [--baseline sync-baseline|unowned]

Starts a real redis-server on a free loopback port and, side by side, two main-backends under uvicorn in
their own processes (offline LLM provider, own data directory, own Redis database), then drives them with
httpx clients from this process. Load shapes: `alone` (one client, requests back to back: the floor),
`staggered` (50 chat users who think between messages) and `burst` (50 simultaneous requests, round after
round: the plan's "50 concurrent chat requests"). The two variants take turns within each shape (ABBA),
so noise from other work on the machine lands on both. Reports client-side latency and the server's
event-loop lag, measured inside the server by a perf_counter sleep-drift probe that this file's wrapper app
adds, with a debug route that exists only here, never in src/.

Variants:
- async:          the real app, autobot.services.main_backend.create_app.
- sync-baseline:  the same app with its chat history swapped for one that sends the same Redis commands
                  through the synchronous redis client inside the async handler: the plan's root cause.
- unowned:        the same app without the session ownership check and the session-list update of each
                  turn (issue 15), to price them: `--baseline unowned`.
`--redis-delay-ms D` puts a TCP proxy holding every chunk D ms each way between the apps and Redis, as
when Redis runs on its own machine (production); 0 connects directly over loopback.
Prints numbers only; it asserts nothing about timing. Bounded: fixed request counts and a time limit.
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

VARIANTS = ("async", "sync-baseline", "unowned")
SHAPES = ("alone", "staggered", "burst")
LAG_INTERVAL_S = 0.005
TIME_LIMIT_S = 300.0


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
        self,
        session_id: str,
        entries: Sequence[Any],
        *,
        last_seq: int,
        model: str | None = None,
        window: int = 0,
    ) -> Any:
        from autobot.chat.entries import ChatEntry
        from autobot.chat.history import AppendResult

        key, meta = self._key(session_id), self._meta(session_id)
        pipe = self._redis.pipeline(transaction=True)
        pipe.hget(meta, "seq")
        pipe.llen(key)
        pipe.rpush(key, *(e.to_json() for e in entries))
        pipe.ltrim(key, -self.max_messages, -1)
        pipe.hset(meta, "seq", last_seq)
        if model is not None:
            pipe.hset(meta, "model", model)
        pipe.expire(key, self.ttl_s)
        pipe.expire(meta, self.ttl_s)
        if window > 0:
            pipe.lrange(key, -window, -1)
        results = pipe.execute()  # blocks the event loop for the whole round trip
        previous = last_seq - len(entries)
        held_seq, held_length = int(results[0] or 0), int(results[1])
        diverged = held_seq != previous or held_length != min(previous, self.max_messages)
        read = [ChatEntry.from_json(item) for item in results[-1]] if window > 0 else []
        return AppendResult(diverged=diverged, window=read)

    async def replace(self, session_id: str, newest: Sequence[Any], *, total: int) -> None:
        key, meta = self._key(session_id), self._meta(session_id)
        batch = list(newest)[-self.max_messages :]
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(key)
        if batch:
            pipe.rpush(key, *(e.to_json() for e in batch))
        pipe.hset(meta, "seq", total)
        pipe.expire(key, self.ttl_s)
        pipe.expire(meta, self.ttl_s)
        pipe.execute()

    async def window(self, session_id: str, count: int) -> list[Any]:
        from autobot.chat.entries import ChatEntry

        raw = self._redis.lrange(self._key(session_id), -count, -1)
        return [ChatEntry.from_json(item) for item in raw]


async def _no_touch(*_: Any, **__: Any) -> None:
    return None


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
        async with inner_lifespan(a):
            backend = a.state.backend
            assert isinstance(backend, BackendState)
            if variant == "unowned":
                backend.sessions.touch = _no_touch  # type: ignore[method-assign]
            if variant == "sync-baseline":
                current = backend.chat.history
                backend.chat.history = SyncRedisHistory(  # type: ignore[assignment]
                    config.redis.url, max_messages=current.max_messages, ttl_s=current.ttl_s
                )
            task = asyncio.create_task(probe.run())
            try:
                yield
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app.router.lifespan_context = lifespan
    if variant == "unowned":
        from autobot.services.main_backend.chat import ChatRequest, _owned_chat_request

        async def unchecked(body: ChatRequest) -> ChatRequest:
            return body

        app.dependency_overrides[_owned_chat_request] = unchecked

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


# -- the optional network delay between the app and Redis (a separate process) ---------------------------


async def delay_proxy(listen_port: int, target_port: int, delay_ms: float) -> None:
    """Forward TCP to 127.0.0.1:target_port, holding every chunk `delay_ms` in each direction: Redis on
    another machine, as in production."""
    delay = delay_ms / 1000

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, chunk = await queue.get()
                if not chunk:
                    writer.close()
                    return
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                writer.write(chunk)
                await writer.drain()

        sender = asyncio.create_task(deliver())
        try:
            while chunk := await reader.read(65536):
                queue.put_nowait((time.monotonic() + delay, chunk))
        except ConnectionError:
            pass
        queue.put_nowait((0.0, b""))
        with contextlib.suppress(ConnectionError):
            await sender

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(pump(client_r, server_w), pump(server_r, client_w))

    server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
    async with server:
        await server.serve_forever()


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


def wait_ready(base_url: str, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(base_url + "/api/ready", timeout=1.0).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"server on {base_url} not ready within {timeout_s}s")


class Target:
    """One running variant: its users (one httpx client, one connection each) and the collected samples."""

    def __init__(self, variant: str, base_url: str, clients: int, stack: contextlib.AsyncExitStack) -> None:
        self.variant = variant
        self.base_url = base_url
        self.clients = clients
        self.stack = stack
        self.users: list[httpx.AsyncClient] = []
        self.sessions: list[str] = []
        self.control: httpx.AsyncClient | None = None

    async def open(self) -> None:
        # One client per simulated user, as 50 browsers would be: one shared httpx pool of 50 connections
        # costs the load generator several ms of CPU per request, which this 2-core machine cannot spare.
        for _ in range(self.clients):
            client = httpx.AsyncClient(
                base_url=self.base_url, limits=httpx.Limits(max_connections=1), timeout=30
            )
            self.users.append(await self.stack.enter_async_context(client))
            # Each user chats in a session main-backend issued to it (its cookie stays in the client).
            created = await client.post("/api/chat/sessions", json={})
            created.raise_for_status()
            self.sessions.append(created.json()["session_id"])
        self.control = await self.stack.enter_async_context(httpx.AsyncClient(base_url=self.base_url))

    async def chat(self, index: int, turn: int, sink: dict[str, Any] | None) -> None:
        body = {
            "message": f"client {index} turn {turn}: how is the cluster doing?",
            "session_id": self.sessions[index],
        }
        start = time.perf_counter()
        try:
            status = str((await self.users[index].post("/api/chat", json=body)).status_code)
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        elapsed = time.perf_counter() - start
        if sink is None:
            return
        if status == "200":
            sink["latencies"].append(elapsed)
        else:
            sink["errors"][status] = sink["errors"].get(status, 0) + 1

    async def lag_reset(self) -> None:
        assert self.control is not None
        await self.control.post("/__bench/lag/reset")

    async def lag(self) -> list[float]:
        assert self.control is not None
        samples: list[float] = (await self.control.get("/__bench/lag")).json()["samples"]
        return samples


async def measure_shape(
    target: Target, shape: str, args: argparse.Namespace, share: int, sink: dict[str, Any]
) -> None:
    """Run one share of a load shape against one variant, adding its samples to `sink`."""
    rng = random.Random(hash((target.variant, shape, share)))
    think = args.think_ms / 1000

    async def staggered_user(index: int) -> None:
        # A chat user: sends, reads the reply, thinks, sends again; start times spread over one think.
        await asyncio.sleep(rng.uniform(0, think))
        for turn in range(args.requests // args.repeats):
            await target.chat(index, turn, sink)
            await asyncio.sleep(think * rng.uniform(0.5, 1.5))

    await target.lag_reset()
    started = time.perf_counter()
    if shape == "alone":  # one user by itself: the floor, no queueing behind anyone
        for turn in range(args.requests // args.repeats):
            await target.chat(0, turn, sink)
    elif shape == "staggered":
        await asyncio.gather(*(staggered_user(i) for i in range(target.clients)))
    else:  # burst: every user at the same instant, round after round (the plan's 50 concurrent requests)
        for turn in range(args.rounds // args.repeats):
            await asyncio.gather(*(target.chat(i, turn, sink) for i in range(target.clients)))
            await asyncio.sleep(0.05)
    sink["wall"] += time.perf_counter() - started
    sink["lag"].extend(await target.lag())


async def drive(targets: list[Target], args: argparse.Namespace) -> dict[tuple[str, str], dict[str, Any]]:
    """Interleave the variants (ABBA per shape) so that noise from other work on the machine hits both."""
    for target in targets:
        await target.open()
        await asyncio.gather(
            *(target.chat(i, -1 - w, None) for i in range(target.clients) for w in range(args.warmup))
        )
    results: dict[tuple[str, str], dict[str, Any]] = {}
    for shape in SHAPES:
        for share in range(args.repeats):
            order = targets if share % 2 == 0 else list(reversed(targets))
            for target in order:
                sink = results.setdefault(
                    (target.variant, shape), {"latencies": [], "errors": {}, "wall": 0.0, "lag": []}
                )
                await measure_shape(target, shape, args, share, sink)
    return results


async def run_all(
    root: Path, redis_port: int, args: argparse.Namespace
) -> dict[tuple[str, str], dict[str, Any]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        async with contextlib.AsyncExitStack() as stack:
            targets = []
            for db, variant in enumerate(("async", args.baseline)):
                workdir = root / variant
                workdir.mkdir()
                # Each variant its own Redis database and data directory, one shared redis-server.
                config = write_config(workdir, f"redis://127.0.0.1:{redis_port}/{db}")
                port = free_port()
                cmd = [sys.executable, __file__, "serve", "--variant", variant, "--config", str(config)]
                procs.append(
                    # This tree's own src first, so the benchmark measures the code it sits next to.
                    subprocess.Popen(
                        [*cmd, "--port", str(port)],
                        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])},
                    )
                )
                await asyncio.to_thread(wait_ready, f"http://127.0.0.1:{port}", procs[-1])
                targets.append(Target(variant, f"http://127.0.0.1:{port}", args.clients, stack))
            return await asyncio.wait_for(drive(targets, args), TIME_LIMIT_S)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
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
    }


def report(rows: dict[tuple[str, str], dict[str, float]], args: argparse.Namespace) -> None:
    print(
        f"{'variant':<14} {'load':<9} {'ok':>5} {'err':>4} {'req/s':>6} {'p50':>7} {'p95':>7} {'p99':>7}"
        f" {'max':>7} {'lag p50':>8} {'lag p99':>8} {'lag max':>8}"
    )
    for shape in SHAPES:
        for variant in ("async", args.baseline):
            r = rows[(variant, shape)]
            cells = [f"{r[k]:>7.1f}" for k in ("p50", "p95", "p99", "max")]
            cells += [f"{r[k]:>8.2f}" for k in ("lag_p50", "lag_p99", "lag_max")]
            counts = f"{r['ok']:>5.0f} {r['errors']:>4.0f} {r['rps']:>6.0f}"
            print(f"{variant:<14} {shape:<9} {counts} " + " ".join(cells))
    print(
        f"(latency and event-loop lag in ms; lag: perf_counter drift of a {LAG_INTERVAL_S * 1000:g} ms sleep)"
    )
    for shape in SHAPES:
        a, s = rows[("async", shape)], rows[(args.baseline, shape)]
        ratios = ", ".join(
            f"{k.replace('_', ' ')} {s[k] / a[k]:.2f}x" for k in ("p50", "p99", "lag_p99", "lag_max")
        )
        print(f"ratio {args.baseline}/async, {shape:<9}: {ratios}")
    a = rows[("async", "staggered")]
    print(
        f"async, staggered, vs targets: p99 {a['p99']:.1f} ms (required < 100, aim < 25); "
        f"lag p99 {a['lag_p99']:.2f} ms (required < 10, aim < 5)"
    )


def main_bench(args: argparse.Namespace) -> None:
    version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=True).stdout
    network = f"behind a {args.redis_delay_ms:g} ms each-way delay proxy" if args.redis_delay_ms else "direct"
    print(
        f"bench_chat: {args.clients} clients, POST /api/chat, offline LLM provider, uvicorn 1 worker each, "
        f"redis-server {version.split()[2].removeprefix('v=')} on loopback ({network}), "
        f"{os.cpu_count()} CPUs, load average before start {os.getloadavg()[0]:.2f}"
    )
    print(
        f"  alone: 1 client, {args.requests} requests in a row; staggered: each client sends {args.requests} "
        f"requests, thinking {args.think_ms} ms (x0.5-1.5) between reply and next message; burst: "
        f"{args.rounds} rounds of {args.clients} simultaneous requests. Variants interleaved in "
        f"{args.repeats} shares per shape."
    )
    with tempfile.TemporaryDirectory(prefix="bench-chat-") as tmp:
        root = Path(tmp)
        server = start_redis(root / "redis")
        proxy: subprocess.Popen[bytes] | None = None
        try:
            redis_port = server.port
            if args.redis_delay_ms:
                redis_port = free_port()
                cmd = [sys.executable, __file__, "proxy", "--listen-port", str(redis_port)]
                cmd += ["--target-port", str(server.port), "--delay-ms", str(args.redis_delay_ms)]
                proxy = subprocess.Popen(cmd)
                time.sleep(1.0)
            results = asyncio.run(run_all(root, redis_port, args))
        finally:
            if proxy is not None:
                proxy.kill()
                proxy.wait()
            server.stop()
    for (variant, shape), result in results.items():
        if result["errors"]:
            print(f"  {variant}/{shape}: errors by status: {json.dumps(result['errors'])}")
    report({key: summarise(result) for key, result in results.items()}, args)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command")
    srv = sub.add_parser("serve", help="internal: run one variant under uvicorn")
    srv.add_argument("--variant", choices=VARIANTS, required=True)
    srv.add_argument("--config", required=True)
    srv.add_argument("--port", type=int, required=True)
    prx = sub.add_parser("proxy", help="internal: the delaying TCP proxy in front of Redis")
    prx.add_argument("--listen-port", type=int, required=True)
    prx.add_argument("--target-port", type=int, required=True)
    prx.add_argument("--delay-ms", type=float, required=True)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=30, help="alone/staggered: requests per client")
    parser.add_argument("--think-ms", type=int, default=500, help="staggered: mean pause between requests")
    parser.add_argument("--rounds", type=int, default=20, help="burst: rounds of simultaneous requests")
    parser.add_argument("--repeats", type=int, default=2, help="shares per shape, variants alternating")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured requests per client first")
    parser.add_argument("--redis-delay-ms", type=float, default=0.0, help="one-way delay to Redis (0: none)")
    parser.add_argument(
        "--baseline", choices=VARIANTS[1:], default="sync-baseline", help="the variant compared with async"
    )
    args = parser.parse_args()
    if args.command == "serve":
        serve(args.variant, args.config, args.port)
    elif args.command == "proxy":
        asyncio.run(delay_proxy(args.listen_port, args.target_port, args.delay_ms))
    else:
        main_bench(args)


if __name__ == "__main__":
    main()
