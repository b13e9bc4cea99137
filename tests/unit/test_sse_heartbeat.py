"""The stream heartbeat: comment lines while the source is silent, nothing added otherwise, and a client that
goes away mid-silence closes the source (a model's stream is not left running for nobody)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from autobot.services.http.sse import HEARTBEAT, with_heartbeat


async def test_pings_fill_the_silence_and_events_pass_unchanged() -> None:
    async def slow() -> AsyncIterator[bytes]:
        yield b"first"
        await asyncio.sleep(0.35)
        yield b"second"

    out = [item async for item in with_heartbeat(slow(), 0.1)]
    assert out[0] == b"first"
    assert out[-1] == b"second"
    assert out[1:-1] == [HEARTBEAT] * len(out[1:-1])
    assert 2 <= len(out[1:-1]) <= 4
    assert HEARTBEAT == b": ping\n\n"  # an SSE comment line: every client ignores it


async def test_a_quick_source_gets_no_heartbeat() -> None:
    async def quick() -> AsyncIterator[bytes]:
        for i in range(5):
            yield str(i).encode()

    assert [item async for item in with_heartbeat(quick(), 0.5)] == [b"0", b"1", b"2", b"3", b"4"]


async def test_closing_during_silence_closes_the_source() -> None:
    state = {"closed": False}

    async def silent() -> AsyncIterator[bytes]:
        try:
            yield b"start"
            await asyncio.sleep(60)
            yield b"never"
        finally:
            state["closed"] = True

    stream = with_heartbeat(silent(), 0.05)
    assert await anext(stream) == b"start"
    assert await anext(stream) == HEARTBEAT
    await stream.aclose()  # what the server does when the client disconnects
    assert state["closed"]


async def test_an_error_of_the_source_reaches_the_consumer() -> None:
    async def failing() -> AsyncIterator[bytes]:
        yield b"ok"
        await asyncio.sleep(0.12)
        raise RuntimeError("model went away")

    seen: list[bytes] = []

    async def consume() -> None:
        async for item in with_heartbeat(failing(), 0.05):
            seen.append(item)

    with pytest.raises(RuntimeError, match="model went away"):
        await consume()
    assert seen[0] == b"ok"
    assert HEARTBEAT in seen
