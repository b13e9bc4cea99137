"""ChatWorkflowManager end to end on real Redis and real transcript files (the LLM is the offline stand-in).

Covers plan fix 2 (async Redis, file I/O off the loop, 50 concurrent chats, no blocking) and the fix 4
integration cases (different models, per-model limits, long conversations, only the needed messages read).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from test_chat_support import dedicated_redis, loop_gaps, monitor_commands, pooled_client
from tests.support.redis_server import RedisServer

from autobot.chat.transcripts import TranscriptStore
from autobot.chat.workflow import (
    ChatBusyError,
    ChatUnavailableError,
    ChatWorkflowManager,
    EmptyMessageError,
    history_cap,
)
from autobot.config import RedisConfig
from autobot.context import ContextTooLargeError, ContextWindowManager, ModelRegistry, UnknownModelError
from autobot.llm.offline import OfflineEchoProvider
from autobot.redis_pool import create_redis

SMALL, MEDIUM, LARGE = "llama-3.2-3b-instruct", "qwen2.5-coder-14b-instruct", "llama3.1:8b"


@pytest.fixture(scope="module")
def windows() -> ContextWindowManager:
    return ContextWindowManager(ModelRegistry.load())


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    async with pooled_client(redis_server.url) as client:
        yield client


def _manager(
    redis: Redis, windows: ContextWindowManager, transcripts_dir: Path, **options: Any
) -> ChatWorkflowManager:
    return ChatWorkflowManager(
        redis=redis,
        windows=windows,
        provider=OfflineEchoProvider(),
        transcripts=TranscriptStore(transcripts_dir),
        history_ttl_s=600,
        **options,
    )


@pytest.fixture
async def manager(
    redis: Redis, windows: ContextWindowManager, tmp_path: Path
) -> AsyncIterator[ChatWorkflowManager]:
    chat = _manager(redis, windows, tmp_path / "transcripts")
    await chat.initialize()
    try:
        yield chat
    finally:
        await chat.aclose()


def _transcript(tmp_path: Path, session_id: str) -> list[dict[str, Any]]:
    """The session's transcript records, read straight from the file."""
    path = tmp_path / "transcripts" / f"{session_id}.jsonl"
    return [json.loads(line) for line in path.read_bytes().splitlines()]


async def _redis_ids(redis: Redis, session_id: str) -> list[str]:
    return [json.loads(raw)["id"] for raw in await redis.lrange(f"chat:history:{session_id}", 0, -1)]


async def _snapshot(redis: Redis, tmp_path: Path, session_id: str) -> tuple[object, ...]:
    """Everything stored for a session: the Redis list and hash, and the transcript's bytes."""
    path = tmp_path / "transcripts" / f"{session_id}.jsonl"
    return (
        await redis.lrange(f"chat:history:{session_id}", 0, -1),
        await redis.hgetall(f"chat:meta:{session_id}"),
        path.read_bytes() if path.exists() else None,
    )


async def _assert_redis_is_the_transcript_tail(
    manager: ChatWorkflowManager, redis: Redis, tmp_path: Path, session_id: str
) -> None:
    ids = [r["id"] for r in _transcript(tmp_path, session_id)]
    assert await _redis_ids(redis, session_id) == ids[-manager.history.max_messages :]
    assert int(await redis.hget(f"chat:meta:{session_id}", "seq") or 0) == len(ids)


def _lranges(commands: list[str]) -> list[tuple[int, int]]:
    found = [re.fullmatch(r"LRANGE chat:history:\S+ (-?\d+) (-?\d+)", c) for c in commands]
    return [(int(m.group(1)), int(m.group(2))) for m in found if m]


async def test_chat_works_with_different_models(manager: ChatWorkflowManager, tmp_path: Path) -> None:
    for name in (SMALL, MEDIUM, LARGE):
        result = await manager.chat(f"s-{name.replace(':', '-').replace('.', '-')}", "hello there", name)
        assert result.model == name
        assert f"({name})" in result.reply  # the offline stand-in names the model it was asked for
        assert result.max_output_tokens == manager.windows.spec(name).max_output_tokens
        assert result.history_used == 0
    default = manager.windows.registry.default_name
    assert (await manager.chat("s-none", "hi")).model == default
    with pytest.raises(UnknownModelError) as unknown:
        await manager.chat("s-unknown", "hi", "no-such-model")
    assert unknown.value.known == manager.windows.registry.names()
    assert not (tmp_path / "transcripts" / "s-unknown.jsonl").exists()


async def test_a_turn_is_stored_in_transcript_and_redis(
    manager: ChatWorkflowManager, redis: Redis, tmp_path: Path
) -> None:
    result = await manager.chat("s1", "what is 2+2?")
    records = _transcript(tmp_path, "s1")
    assert [(m["seq"], m["role"], m["content"]) for m in records] == [
        (1, "user", "what is 2+2?"),
        (2, "assistant", result.reply),
    ]
    assert [m["id"] for m in records] == [result.message_id, result.reply_id]
    stored = await manager.history.window("s1", 10)
    assert [e.id for e in stored] == [result.message_id, result.reply_id]
    assert await manager.history.session_model("s1") == result.model
    second = await manager.chat("s1", "and 3+3?")
    assert second.history_used == 2


async def test_limits_adjust_per_model_and_only_the_needed_messages_are_read(
    manager: ChatWorkflowManager, redis_server: RedisServer
) -> None:
    for turn in range(50):
        await manager.chat("long", f"turn {turn}")
    used: dict[str, int] = {}
    for name in (SMALL, MEDIUM, LARGE):
        fetch = manager.windows.fetch_limit(name)
        async with monitor_commands(redis_server.url) as commands:
            result = await manager.chat("long", "next", name)
        # One read, of exactly the model's window plus the new message: never the whole history.
        assert _lranges(commands) == [(-(fetch + 1), -1)]
        assert result.history_used <= manager.windows.spec(name).message_limit
        assert result.history_used in (fetch, fetch - 1)  # -1 when the window must start on a user turn
        used[name] = result.history_used
    assert used[SMALL] < used[MEDIUM] < used[LARGE]


async def test_long_conversations_stay_within_budget_and_lose_nothing(
    manager: ChatWorkflowManager, redis: Redis, tmp_path: Path
) -> None:
    spec = manager.windows.spec(SMALL)
    paragraph = "The quick brown fox jumps over the lazy dog. " * 20
    for turn in range(80):
        result = await manager.chat("marathon", f"{turn}: {paragraph}", SMALL)
        assert result.prompt_tokens <= spec.prompt_token_budget
        assert result.history_used <= spec.message_limit
    # The history token budget, not the message count, is what binds with messages this long.
    assert 0 < result.history_used < manager.windows.fetch_limit(SMALL) - 1
    assert len(_transcript(tmp_path, "marathon")) == 160
    assert await redis.llen("chat:history:marathon") == history_cap(manager.windows)
    page = await manager.history.page("marathon", limit=1)
    assert page.total == 160


async def test_a_redis_miss_is_refilled_from_the_transcript(
    manager: ChatWorkflowManager, redis: Redis, tmp_path: Path
) -> None:
    for turn in range(5):
        await manager.chat("s", f"turn {turn}")
    await redis.flushdb()  # Redis restarted without persistence, or the TTL expired
    result = await manager.chat("s", "after the restart")
    assert result.history_used == 10
    stored = await manager.history.window("s", 100)
    assert [e.id for e in stored] == [m["id"] for m in _transcript(tmp_path, "s")]
    page = await manager.history.page("s", limit=3)
    assert [e.seq for e in page.entries] == [10, 11, 12]


async def test_messages_endpoint_view_is_windowed_for_the_session_model_and_refills(
    manager: ChatWorkflowManager, redis: Redis
) -> None:
    for turn in range(30):
        await manager.chat("v", f"turn {turn}", SMALL)
    view = await manager.messages("v")
    assert view.model == SMALL
    assert view.limit == manager.windows.fetch_limit(SMALL)
    assert [e.seq for e in view.page.entries] == list(range(61 - view.limit, 61))
    bigger = await manager.messages("v", model=LARGE)
    assert bigger.limit == manager.windows.fetch_limit(LARGE)
    assert (await manager.messages("v", limit=10**6)).limit == manager.history.max_messages
    older = await manager.messages("v", limit=5, before=view.page.entries[0].seq)
    assert [e.seq for e in older.page.entries] == [view.page.entries[0].seq - i for i in range(5, 0, -1)]
    await redis.flushdb()
    refilled = await manager.messages("v", limit=4)
    assert refilled.page.total == 60
    assert [e.seq for e in refilled.page.entries] == [57, 58, 59, 60]


async def test_stream_yields_the_reply_and_persists_it_when_done(
    manager: ChatWorkflowManager, tmp_path: Path
) -> None:
    stream = await manager.stream("st", "stream me", MEDIUM)
    assert stream.model == MEDIUM
    assert stream.result is None
    chunks = [chunk async for chunk in stream.chunks()]
    assert len(chunks) > 3
    assert stream.result is not None
    assert "".join(chunks) == stream.result.reply
    messages = _transcript(tmp_path, "st")
    assert [m["content"] for m in messages] == ["stream me", stream.result.reply]


async def test_50_concurrent_chats_all_complete_and_are_stored(
    manager: ChatWorkflowManager, tmp_path: Path
) -> None:
    async with loop_gaps() as gaps:
        results = await asyncio.gather(*(manager.chat(f"c{i}", f"hello {i}") for i in range(50)))
        same = await asyncio.gather(*(manager.chat("shared", f"hello {i}") for i in range(50)))
    assert len({r.reply_id for r in results}) == 50
    for i in range(50):
        assert len(_transcript(tmp_path, f"c{i}")) == 2
    shared = _transcript(tmp_path, "shared")
    assert [m["seq"] for m in shared] == list(range(1, 101))
    assert {m["id"] for m in shared} == {r.message_id for r in same} | {r.reply_id for r in same}
    assert len(await manager.history.window("shared", 1000)) == min(100, manager.history.max_messages)
    # Only a gross stall is caught here (a noisy 2-core machine must not fail the suite); the benchmark
    # measures lag properly, and the CLIENT PAUSE test below proves Redis waits do not hold the loop.
    assert max(gaps) < 0.5


async def test_the_event_loop_keeps_running_while_redis_is_stalled(
    manager: ChatWorkflowManager, redis_server: RedisServer
) -> None:
    # CLIENT PAUSE stalls every write for 400 ms: an async client waits without holding the loop; a
    # synchronous client inside the handler would freeze every other request (and this probe) as long.
    admin = Redis.from_url(redis_server.url)
    try:
        async with loop_gaps() as gaps:
            await admin.client_pause(400, all=False)
            started = time.perf_counter()
            await manager.chat("paused", "are you there?")
            elapsed = time.perf_counter() - started
    finally:
        await admin.client_unpause()
        await admin.aclose()
    assert elapsed >= 0.3  # the pause really was in the way of the chat
    assert len(gaps) > 20
    assert max(gaps) < 0.2  # a blocking client would show one gap of at least the 0.3 s stall


async def test_redis_down_gives_chat_unavailable_and_the_message_is_in_the_transcript(
    windows: ContextWindowManager, tmp_path: Path
) -> None:
    with dedicated_redis(tmp_path / "redis") as server:
        client = create_redis(RedisConfig(url=server.url, retries=0, connect_timeout_s=0.5))
        chat = _manager(client, windows, tmp_path / "transcripts")
        await chat.initialize()
        try:
            await chat.chat("s", "before the outage")
            server.stop()
            with pytest.raises(ChatUnavailableError) as caught:
                await chat.chat("s", "during the outage")
            with pytest.raises(ChatUnavailableError):
                await chat.stream("s", "streamed during the outage")
        finally:
            await chat.aclose()
            await client.aclose(close_connection_pool=True)
    messages = _transcript(tmp_path, "s")
    assert [m["content"] for m in messages][-2:] == ["during the outage", "streamed during the outage"]
    assert caught.value.saved_ids == (messages[-2]["id"],)
    assert "Redis" in str(caught.value)


async def test_a_message_too_large_for_the_model_names_the_numbers(manager: ChatWorkflowManager) -> None:
    spec = manager.windows.spec("phi3:mini")
    with pytest.raises(ContextTooLargeError) as caught:
        await manager.chat("big", "word " * (spec.context_window_tokens * 2), "phi3:mini")
    assert caught.value.available_tokens == spec.prompt_token_budget
    assert caught.value.needed_tokens > spec.prompt_token_budget
    # The same message fits a model with a larger window.
    assert (await manager.chat("big", "word " * (spec.context_window_tokens * 2), LARGE)).model == LARGE


async def test_bad_input_is_refused_before_anything_is_stored(
    manager: ChatWorkflowManager, tmp_path: Path
) -> None:
    with pytest.raises(EmptyMessageError):
        await manager.chat("s", "   \n")
    with pytest.raises(ValueError, match="session id"):
        await manager.chat("../../etc/passwd", "hi")
    assert list((tmp_path / "transcripts").iterdir()) == []


async def test_a_refused_message_leaves_the_conversation_unchanged(
    manager: ChatWorkflowManager, redis: Redis, tmp_path: Path
) -> None:
    for turn in range(3):
        await manager.chat("r", f"turn {turn}")
    before = await _snapshot(redis, tmp_path, "r")
    with pytest.raises(ContextTooLargeError):
        await manager.chat("r", "x " * 20000)
    with pytest.raises(ContextTooLargeError):
        await manager.stream("r", "x " * 20000)
    with pytest.raises(UnknownModelError):
        await manager.chat("r", "hi", "gpt-17-ultra")
    with pytest.raises(EmptyMessageError):
        await manager.chat("r", " \t ")
    assert await _snapshot(redis, tmp_path, "r") == before
    after = await manager.chat("r", "still there?")
    assert (after.history_used, after.history_dropped) == (6, 0)


async def test_no_free_redis_slot_is_busy_and_stores_nothing(
    redis: Redis, windows: ContextWindowManager, redis_server: RedisServer, tmp_path: Path
) -> None:
    chat = _manager(
        redis, windows, tmp_path / "transcripts", redis_slots=1, busy_wait_s=0.05, retry_after_s=3
    )
    await chat.initialize()
    admin = Redis.from_url(redis_server.url)
    try:
        await admin.client_pause(500, all=False)  # writes wait: the first turn keeps the only slot
        first = asyncio.create_task(chat.chat("holder", "I got the slot"))
        await asyncio.sleep(0.1)
        with pytest.raises(ChatBusyError) as busy:
            await chat.chat("second", "no slot for me")
        with pytest.raises(ChatBusyError):
            await chat.messages("holder")
        assert (await first).reply
    finally:
        await admin.client_unpause()
        await admin.aclose()
        await chat.aclose()
    assert (busy.value.saved_ids, busy.value.retry_after_s) == ((), 3)
    assert not (tmp_path / "transcripts" / "second.jsonl").exists()
    assert await redis.exists("chat:history:second", "chat:meta:second") == 0


async def test_a_reply_redis_could_not_take_is_kept_and_redis_catches_up_on_the_next_turn(
    windows: ContextWindowManager, tmp_path: Path
) -> None:
    with dedicated_redis(tmp_path / "redis") as server:
        client = create_redis(RedisConfig(url=server.url, retries=0))
        admin = Redis.from_url(server.url)
        chat = _manager(client, windows, tmp_path / "transcripts")
        await chat.initialize()
        try:
            await chat.chat("s", "one")
            stream = await chat.stream("s", "two")
            # Redis refuses writes (reads still work) while the reply is being stored.
            await admin.config_set("min-replicas-to-write", 1)
            chunks = [chunk async for chunk in stream.chunks()]
            assert stream.result is not None
            assert stream.result.reply == "".join(
                chunks
            )  # the turn succeeded: the reply is in the transcript
            records = _transcript(tmp_path, "s")
            assert records[-1]["id"] == stream.result.reply_id
            assert stream.result.reply_id not in await _redis_ids(client, "s")
            # A message whose own Redis write fails is saved and reported as such.
            with pytest.raises(ChatUnavailableError) as caught:
                await chat.chat("s", "three")
            assert caught.value.saved_ids == (_transcript(tmp_path, "s")[-1]["id"],)
            await admin.config_set("min-replicas-to-write", 0)
            result = await chat.chat("s", "four")
            assert result.history_used == 5  # one, reply, two, reply, three: nothing forgotten
            await _assert_redis_is_the_transcript_tail(chat, client, tmp_path, "s")
        finally:
            await chat.aclose()
            await admin.aclose()
            await client.aclose(close_connection_pool=True)


async def test_a_read_rebuilds_a_list_behind_its_transcript(
    manager: ChatWorkflowManager, redis: Redis, tmp_path: Path
) -> None:
    for turn in range(4):
        await manager.chat("behind", f"turn {turn}")
    await redis.rpop("chat:history:behind", 3)  # as if three writes never reached Redis
    await redis.hset("chat:meta:behind", "seq", 5)
    view = await manager.messages("behind", limit=8)
    assert [e.seq for e in view.page.entries] == list(range(1, 9))
    await _assert_redis_is_the_transcript_tail(manager, redis, tmp_path, "behind")


async def test_pages_older_than_redis_keeps_come_from_the_transcript(
    manager: ChatWorkflowManager, redis: Redis
) -> None:
    for turn in range(60):
        await manager.chat("deep", f"turn {turn}")
    seen: list[int] = []
    before: int | None = None
    while True:
        view = await manager.messages("deep", limit=25, before=before)
        assert view.page.total == 120
        assert view.page.retained == manager.history.max_messages
        seen[:0] = [e.seq for e in view.page.entries]
        assert [e.seq for e in view.page.entries] == sorted(e.seq for e in view.page.entries)
        before = view.page.next_before
        if before is None:
            break
    assert seen == list(range(1, 121))
    assert view.page.entries[0].entry.content == "turn 0"
    with pytest.raises(UnknownModelError):
        await manager.messages("deep", model="gpt-17-ultra")


async def test_using_the_manager_before_initialize_is_a_clear_error(
    redis: Redis, windows: ContextWindowManager, tmp_path: Path
) -> None:
    chat = _manager(redis, windows, tmp_path)
    with pytest.raises(RuntimeError, match="initialize"):
        await chat.chat("s", "hi")
