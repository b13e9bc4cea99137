"""A FAKE LLM runtime for tests: a real HTTP server on a loopback port that speaks Ollama's native chat API
(POST /api/chat, JSON or NDJSON stream) and the OpenAI-compatible one (POST /v1/chat/completions, JSON or
server-sent events), replaying scripted replies instead of running a model.

It records every request (path, headers, JSON body) so tests can assert what the providers sent, and can be
scripted to fail the ways real runtimes do: HTTP errors, malformed JSON, slow answers, cut streams.

`GatedFakeLLM` is a FAKE LLM provider (in process, no runtime behind it) whose stream pauses after its first
chunk until the test opens a gate: a reader that got the first chunk before opening the gate proves the reply
travelled chunk by chunk, with no timing involved.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from autobot.context.registry import ModelSpec
from autobot.llm.base import Completion
from autobot.messages import Message

PROMPT_EVAL_COUNT = 12


@dataclass
class Script:
    """How the fake answers the next requests."""

    reply: str = "Hello from the fake LLM runtime."
    # Streamed pieces; by default the reply in three parts.
    chunks: list[str] | None = None
    model: str = "fake-model:latest"
    status: int = 200
    # The whole body to send instead of a well-formed reply (with `status`).
    raw_body: bytes | None = None
    # Seconds to wait before answering (interrupted when the fake stops).
    delay_s: float = 0.0
    # Streaming: after this many chunks, send an in-band error object.
    error_after_chunks: int | None = None
    # Streaming: after all chunks, close the connection without the final done/[DONE] and chunk terminator.
    cut_stream: bool = False
    # Streaming: send a malformed line after the first chunk.
    malformed_line: bool = False

    def pieces(self) -> list[str]:
        if self.chunks is not None:
            return self.chunks
        third = max(1, len(self.reply) // 3)
        return [self.reply[:third], self.reply[third : 2 * third], self.reply[2 * third :]]


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeLLMRuntime:
    url: str
    script: Script = field(default_factory=Script)
    requests: list[RecordedRequest] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def last(self) -> RecordedRequest:
        assert self.requests, "the fake LLM runtime received no request"
        return self.requests[-1]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean

    def do_POST(self) -> None:
        runtime = self.server.runtime
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length)
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw
        runtime.requests.append(RecordedRequest(self.path, dict(self.headers.items()), body))
        script = runtime.script
        if script.delay_s and runtime.stopping.wait(script.delay_s):
            return
        try:
            if script.raw_body is not None or script.status != 200:
                self._send(script.status, script.raw_body or b"")
            elif self.path == "/api/chat":
                self._ollama(script, body)
            elif self.path == "/v1/chat/completions":
                self._openai(script, body)
            else:
                self._send(404, b'{"error": "not found"}')
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout tests)

    def _send(self, status: int, payload: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _start_chunked(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _end_chunked(self, script: Script) -> None:
        if script.cut_stream:
            self.close_connection = True  # no terminating chunk: an incomplete body
            return
        self.wfile.write(b"0\r\n\r\n")

    def _ollama(self, script: Script, body: Any) -> None:
        if not body.get("stream", True):
            reply = {
                "model": script.model,
                "created_at": "2024-01-01T00:00:00Z",
                "message": {"role": "assistant", "content": script.reply},
                "done": True,
                "done_reason": "stop",
                "prompt_eval_count": PROMPT_EVAL_COUNT,
                "eval_count": len(script.reply.split()),
            }
            self._send(200, json.dumps(reply).encode())
            return
        self._start_chunked("application/x-ndjson")
        for index, piece in enumerate(script.pieces()):
            if script.error_after_chunks == index:
                self._chunk(b'{"error": "the fake runtime ran out of memory"}\n')
                self._end_chunked(script)
                return
            line = {"model": script.model, "message": {"role": "assistant", "content": piece}, "done": False}
            self._chunk(json.dumps(line).encode() + b"\n")
            if script.malformed_line and index == 0:
                self._chunk(b"{this is not json\n")
        if not script.cut_stream:
            final = {
                "model": script.model,
                "message": {"role": "assistant", "content": ""},
                "done": True,
                "done_reason": "stop",
                "prompt_eval_count": PROMPT_EVAL_COUNT,
                "eval_count": len(script.pieces()),
            }
            self._chunk(json.dumps(final).encode() + b"\n")
        self._end_chunked(script)

    def _openai(self, script: Script, body: Any) -> None:
        if not body.get("stream", False):
            reply = {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "model": script.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": script.reply},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": PROMPT_EVAL_COUNT, "completion_tokens": 7, "total_tokens": 19},
            }
            self._send(200, json.dumps(reply).encode())
            return
        self._start_chunked("text/event-stream")
        self._chunk(b": keep-alive comment\n\n")
        for index, piece in enumerate(script.pieces()):
            if script.error_after_chunks == index:
                self._chunk(b'data: {"error": {"message": "the fake runtime ran out of memory"}}\n\n')
                self._end_chunked(script)
                return
            event = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "model": script.model,
                "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
            }
            self._chunk(b"data: " + json.dumps(event).encode() + b"\n\n")
            if script.malformed_line and index == 0:
                self._chunk(b"data: {this is not json\n\n")
        if not script.cut_stream:
            self._chunk(b"data: [DONE]\n\n")
        self._end_chunked(script)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    runtime: FakeLLMRuntime


@contextmanager
def running_fake_llm_runtime() -> Iterator[FakeLLMRuntime]:
    server = _Server(("127.0.0.1", 0), _Handler)
    host, port = server.server_address[:2]
    runtime = FakeLLMRuntime(url=f"http://{host!s}:{port}")
    server.runtime = runtime
    # A short poll interval: shutdown() waits up to one interval, and every test stops its fake.
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), name="fake-llm-runtime", daemon=True)
    thread.start()
    try:
        yield runtime
    finally:
        runtime.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class GatedFakeLLM:
    """A FAKE LLM provider: streams `first`, waits for `gate`, then streams `rest`."""

    name = "fake-gated-llm (not a language model)"

    def __init__(self, first: str, rest: Sequence[str]) -> None:
        self.first = first
        self.rest = list(rest)
        self.gate = asyncio.Event()

    async def complete(self, messages: Sequence[Message], *, model: ModelSpec, max_tokens: int) -> Completion:
        text = self.first + "".join(self.rest)
        return Completion(text, "fake-gated", None, None, self.name)

    async def stream(
        self, messages: Sequence[Message], *, model: ModelSpec, max_tokens: int
    ) -> AsyncIterator[str]:
        yield self.first
        await self.gate.wait()
        for chunk in self.rest:
            yield chunk

    async def aclose(self) -> None:
        return None
