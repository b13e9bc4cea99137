#!/usr/bin/env python3
"""Traffic for the scenarios' machines: legitimate users of main-backend, or a rogue caller of npu-worker.

Runs ON a cluster machine (copied there by the tests), with the standard library only, so it reaches the other
machines over the cluster network and nothing else. Bounded: it stops after --duration seconds or --count
requests, whichever comes first, or on SIGTERM; then it writes its results as JSON to --out.

  legit  users of main-backend (--target http://127.0.0.1:8001): per loop a chat turn (which main-backend
         answers through ai-stack, signed), a text-processing call (npu-worker) and a browser session created,
         read and deleted (browser-service). Every request is expected to succeed.
  rogue  a caller without keys, at npu-worker (--target http://autobot-npu-worker:8081): unsigned requests and
         requests signed with a made-up key, claiming to be main-backend. Its answers are recorded: 200 in the
         logging phase, 401 under enforcement.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import http.client
import json
import os
import secrets
import signal
import threading
import time
import urllib.parse
from collections import Counter
from typing import Any

STOP = threading.Event()


class Results:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_route: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()
        self.failures: list[dict[str, Any]] = []
        self.requests = 0
        self.failed = 0
        self.started = time.time()
        self.latencies: list[float] = []

    def record(self, route: str, status: int | str, ok: bool, detail: str = "", seconds: float = 0.0) -> None:
        with self.lock:
            self.requests += 1
            self.latencies.append(seconds)
            self.by_route[route] += 1
            self.statuses[f"{route} {status}"] += 1
            if not ok:
                self.failed += 1
            if not ok and len(self.failures) < 200:
                self.failures.append(
                    {
                        "t": round(time.time() - self.started, 3),
                        "route": route,
                        "status": status,
                        "detail": detail[:300],
                    }
                )

    def to_dict(self, mode: str) -> dict[str, Any]:
        with self.lock:
            return {
                "mode": mode,
                "requests": self.requests,
                "failed": self.failed,
                "latency_ms": _latency(self.latencies),
                "by_route": dict(self.by_route),
                "statuses": dict(self.statuses),
                "failures": self.failures,
                "seconds": round(time.time() - self.started, 3),
            }


def _latency(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {"p50": at(0.50), "p99": at(0.99), "max": round(1000 * ordered[-1], 2)}


def request(
    target: str,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    url = urllib.parse.urlsplit(target)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        payload = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        all_headers = {"content-type": "application/json", **(headers or {})}
        conn.request(method, path, body=payload, headers=all_headers)
        response = conn.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data
    finally:
        conn.close()


class User:
    """One legitimate user: its own cookie (if main-backend issues one) and conversation."""

    def __init__(self, target: str, results: Results, index: int) -> None:
        self.target, self.results, self.index = target, results, index
        self.cookie = ""
        self.session = ""

    def call(self, route: str, method: str, path: str, body: Any = None, ok: tuple[int, ...] = (200,)) -> Any:
        headers = {"cookie": self.cookie} if self.cookie else {}
        started = time.monotonic()
        try:
            status, response_headers, data = request(self.target, method, path, body, headers)
        except OSError as exc:
            self.results.record(route, type(exc).__name__, False, str(exc), time.monotonic() - started)
            return None
        cookie = response_headers.get("set-cookie")
        if cookie:
            self.cookie = cookie.split(";", 1)[0]
        good = status in ok
        detail = "" if good else data.decode("utf-8", "replace")
        self.results.record(route, status, good, detail, time.monotonic() - started)
        if not good or not data:
            return None
        try:
            return json.loads(data)
        except ValueError:
            return data

    def start(self) -> None:
        created = self.call("POST /api/chat/sessions", "POST", "/api/chat/sessions", {}, ok=(201,))
        if not (isinstance(created, dict) and created.get("session_id")):
            raise SystemExit(f"user {self.index}: main-backend issued no session: {created!r}")
        self.session = created["session_id"]

    def loop(self, n: int, chat_only: bool = False) -> None:
        self.call(
            "POST /api/chat",
            "POST",
            "/api/chat",
            {"session_id": self.session, "message": f"traffic turn {n} from user {self.index}"},
        )
        if chat_only:
            return
        self.call(
            "POST /api/tools/process",
            "POST",
            "/api/tools/process",
            {"task": "embed", "texts": [f"text {n}", "cluster traffic"], "dimensions": 16},
        )
        created = self.call(
            "POST /api/tools/browser-sessions",
            "POST",
            "/api/tools/browser-sessions",
            {"url": f"https://example.org/page/{n}"},
            ok=(201,),
        )
        if isinstance(created, dict) and created.get("id"):
            sid = created["id"]
            self.call("GET /api/tools/browser-sessions/*", "GET", f"/api/tools/browser-sessions/{sid}")
            self.call(
                "DELETE /api/tools/browser-sessions/*",
                "DELETE",
                f"/api/tools/browser-sessions/{sid}",
                ok=(204,),
            )


def rogue_headers(body: bytes, path: str, signed: bool) -> dict[str, str]:
    if not signed:
        return {}
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    created, nonce = int(time.time()), secrets.token_urlsafe(16)
    params = (
        f'("@method" "@path" "@query" "content-digest" "x-service-id");created={created};'
        f'nonce="{nonce}";keyid="main-backend:v1";alg="hmac-sha256"'
    )
    base = (
        f'"@method": POST\n"@path": {path}\n"@query": ?\n"content-digest": sha-256=:{digest}:\n'
        f'"x-service-id": main-backend\n"@signature-params": {params}'
    )
    made_up_key = secrets.token_bytes(32)
    signature = base64.b64encode(hmac.new(made_up_key, base.encode(), hashlib.sha256).digest()).decode()
    return {
        "x-service-id": "main-backend",
        "content-digest": f"sha-256=:{digest}:",
        "signature-input": f"autobot={params}",
        "signature": f"autobot=:{signature}:",
    }


def run_rogue(target: str, results: Results, deadline: float, count: int, pause: float) -> None:
    path = "/api/process"
    for n in range(count):
        if STOP.is_set() or time.time() > deadline:
            return
        signed = n % 2 == 1
        body = json.dumps({"task": "digest", "texts": [f"rogue {n}"]}).encode()
        route = "signed-with-a-made-up-key" if signed else "unsigned"
        try:
            status, _, data = request(
                target, "POST", path, headers=rogue_headers(body, path, signed), raw=body
            )
        except OSError as exc:
            results.record(route, type(exc).__name__, True, str(exc))
        else:
            results.record(route, status, True, data.decode("utf-8", "replace")[:200])
        STOP.wait(pause)


def run_legit(
    target: str, results: Results, deadline: float, count: int, users: int, pause: float, chat_only: bool
) -> None:
    budget = threading.Semaphore(count)

    def worker(index: int) -> None:
        user = User(target, results, index)
        user.start()
        n = 0
        while not STOP.is_set() and time.time() < deadline and budget.acquire(blocking=False):
            user.loop(n, chat_only)
            n += 1
            STOP.wait(pause)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(users)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["legit", "rogue"])
    parser.add_argument("--target", required=True)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds, at most 900")
    parser.add_argument(
        "--count", type=int, default=2000, help="loops (legit) or requests (rogue), at most 20000"
    )
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--pause", type=float, default=0.05)
    parser.add_argument("--chat-only", action="store_true", help="legit: chat turns only (flip benchmark)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    duration, count = min(args.duration, 900.0), min(args.count, 20000)
    signal.signal(signal.SIGTERM, lambda *_: STOP.set())
    results = Results()
    deadline = time.time() + duration
    if args.mode == "legit":
        run_legit(args.target, results, deadline, count, args.users, args.pause, args.chat_only)
    else:
        run_rogue(args.target, results, deadline, count, args.pause)
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(results.to_dict(args.mode), handle)
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
