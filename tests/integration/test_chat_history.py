"""RedisChatHistory against a real redis-server: atomic appends, bounded lists, window reads, pagination."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from redis.asyncio import Redis
from test_chat_support import dedicated_redis, monitor_commands, pooled_client
from tests.support.redis_server import RedisServer

from autobot.chat.entries import ChatEntry
from autobot.chat.history import HistoryBusyError, HistoryUnavailableError, RedisChatHistory
from autobot.config import RedisConfig
from autobot.redis_pool import create_redis


def _entries(n: int, start: int = 0) -> list[ChatEntry]:
    return [ChatEntry.new("user" if i % 2 == 0 else "assistant", f"m{i}") for i in range(start, start + n)]


async def _append_all(
    history: RedisChatHistory, session: str, entries: list[ChatEntry], start: int = 0
) -> None:
    """Append one entry at a time, numbered as a transcript would number them."""
    for i, e in enumerate(entries):
        await history.append(session, [e], last_seq=start + i + 1)


async def test_append_then_window_returns_the_newest_in_order(redis_client: Redis) -> None:
    history = RedisChatHistory(redis_client, max_messages=100, ttl_s=60)
    entries = _entries(10)
    await _append_all(history, "s", entries)
    assert await history.window("s", 3) == entries[-3:]
    assert await history.window("s", 50) == entries
    assert await history.window("s", 0) == []
    assert await history.window("empty", 5) == []


async def test_append_sets_ttl_and_trims_to_the_cap(redis_client: Redis) -> None:
    history = RedisChatHistory(redis_client, max_messages=5, ttl_s=120)
    entries = _entries(12)
    await history.append("s", entries[:7], last_seq=7)
    assert not (await history.append("s", entries[7:], last_seq=12)).diverged
    assert await redis_client.llen("chat:history:s") == 5
    assert await history.window("s", 100) == entries[-5:]
    for key in ("chat:history:s", "chat:meta:s"):
        assert 0 < await redis_client.ttl(key) <= 120
    page = await history.page("s", limit=100)
    assert (page.total, page.retained) == (12, 5)
    assert [e.seq for e in page.entries] == [8, 9, 10, 11, 12]


async def test_200_concurrent_appends_lose_nothing(redis_server: RedisServer) -> None:
    async with pooled_client(redis_server.url) as client:
        history = RedisChatHistory(client, max_messages=1000, ttl_s=60)
        entries = _entries(200)
        await asyncio.gather(*(history.append("busy", [e], last_seq=1) for e in entries))
        stored = await history.window("busy", 1000)
    assert len(stored) == 200
    assert {e.id for e in stored} == {e.id for e in entries}


async def test_concurrent_appends_past_the_cap_keep_exactly_the_cap(redis_server: RedisServer) -> None:
    async with pooled_client(redis_server.url) as client:
        history = RedisChatHistory(client, max_messages=50, ttl_s=60)
        await asyncio.gather(*(history.append("busy", [e], last_seq=1) for e in _entries(200)))
        assert await client.llen("chat:history:busy") == 50


async def test_the_append_reports_whether_redis_was_in_step_with_the_transcript(redis_client: Redis) -> None:
    history = RedisChatHistory(redis_client, max_messages=3, ttl_s=60)
    assert (await history.append("s", _entries(1), last_seq=1)).diverged is False  # new session
    assert (await history.append("s", _entries(2), last_seq=3)).diverged is False
    assert (await history.append("s", _entries(1), last_seq=4)).diverged is False  # trimmed to the cap
    # An earlier write never reached Redis: it holds seq 4, the transcript's entry before is 5.
    assert (await history.append("s", _entries(1), last_seq=6)).diverged is True
    await redis_client.delete("chat:history:s", "chat:meta:s")  # expired or flushed
    assert (await history.append("s", _entries(1), last_seq=7)).diverged is True
    await redis_client.delete("chat:history:s")  # the list lost, the count kept
    await redis_client.hset("chat:meta:s", "seq", 7)
    assert (await history.append("s", _entries(1), last_seq=8)).diverged is True
    with pytest.raises(ValueError, match="last_seq"):
        await history.append("s", _entries(2), last_seq=1)


async def test_replace_rebuilds_the_list_from_the_transcript_and_keeps_the_model(redis_client: Redis) -> None:
    history = RedisChatHistory(redis_client, max_messages=6, ttl_s=60)
    await history.append("s", _entries(3), last_seq=3, model="m1")
    transcript = _entries(10)
    await history.replace("s", transcript, total=10)
    assert await history.window("s", 100) == transcript[-6:]
    page = await history.page("s", limit=3)
    assert [e.seq for e in page.entries] == [8, 9, 10]
    assert (page.total, page.retained) == (10, 6)
    assert await history.session_model("s") == "m1"
    assert (await history.append("s", _entries(1), last_seq=11)).diverged is False
    await history.replace("s", [], total=0)
    assert (await history.page("s", limit=3)).total == 0


async def test_pagination_walks_back_through_everything_redis_keeps(redis_client: Redis) -> None:
    history = RedisChatHistory(redis_client, max_messages=30, ttl_s=60)
    entries = _entries(45)
    await history.append("s", entries, last_seq=45)
    seen: list[str] = []
    before: int | None = None
    while True:
        page = await history.page("s", limit=10, before=before)
        if not page.entries:
            break
        seen[:0] = [e.entry.content for e in page.entries]
        before = page.next_before
    assert seen == [e.content for e in entries[15:]]
    # The oldest page Redis serves still points further back (older pages come from the transcript),
    # where Redis itself has nothing.
    assert before == 16
    assert (page.total, page.retained, page.oldest_retained) == (45, 30, 16)
    assert (await history.page("s", limit=10, before=1)).entries == []


async def test_window_read_is_one_lrange_of_the_window_size_however_long_the_history(
    redis_client: Redis, redis_server: RedisServer
) -> None:
    history = RedisChatHistory(redis_client, max_messages=20_000, ttl_s=60)
    await history.append("long", _entries(5000), last_seq=5000)
    async with monitor_commands(redis_server.url) as commands:
        window = await history.window("long", 21)
    assert len(window) == 21
    assert commands == ["LRANGE chat:history:long -21 -1"]


async def test_append_is_one_multi_exec_transaction(redis_client: Redis, redis_server: RedisServer) -> None:
    history = RedisChatHistory(redis_client, max_messages=40, ttl_s=99)
    async with monitor_commands(redis_server.url) as commands:
        await history.append("s", _entries(1), last_seq=1, model="m1")
    names = [c.split(" ")[0] for c in commands]
    assert names == ["MULTI", "HGET", "LLEN", "RPUSH", "LTRIM", "HSET", "HSET", "EXPIRE", "EXPIRE", "EXEC"]
    assert "LTRIM chat:history:s -40 -1" in commands
    assert "HSET chat:meta:s seq 1" in commands
    assert "EXPIRE chat:history:s 99" in commands
    assert await history.session_model("s") == "m1"


async def test_append_can_read_the_window_in_the_same_transaction(
    redis_client: Redis, redis_server: RedisServer
) -> None:
    history = RedisChatHistory(redis_client, max_messages=100, ttl_s=60)
    entries = _entries(30)
    await history.append("s", entries[:29], last_seq=29)
    async with monitor_commands(redis_server.url) as commands:
        result = await history.append("s", entries[29:], last_seq=30, window=6)
    assert result.window == entries[-6:]
    assert result.diverged is False
    names = [c.split(" ")[0] for c in commands]
    assert names[0] == "MULTI"
    assert names[-2:] == ["LRANGE", "EXEC"]
    assert "LRANGE chat:history:s -6 -1" in commands


async def test_a_corrupt_element_is_skipped_and_logged(
    redis_client: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    history = RedisChatHistory(redis_client, max_messages=10, ttl_s=60)
    good = _entries(2)
    await history.append("s", good[:1], last_seq=1)
    await redis_client.rpush("chat:history:s", b"{garbage")
    await history.append("s", good[1:], last_seq=3)
    with caplog.at_level(logging.WARNING):
        assert await history.window("s", 10) == good
    assert "corrupt chat entry" in caplog.text
    page = await history.page("s", limit=10)
    assert [e.seq for e in page.entries] == [1, 3]


async def test_bad_arguments_are_refused(redis_client: Redis) -> None:
    with pytest.raises(ValueError, match="max_messages"):
        RedisChatHistory(redis_client, max_messages=0, ttl_s=1)
    with pytest.raises(ValueError, match="ttl_s"):
        RedisChatHistory(redis_client, max_messages=1, ttl_s=0)
    history = RedisChatHistory(redis_client, max_messages=1, ttl_s=1)
    with pytest.raises(ValueError, match="at least one"):
        await history.append("s", [], last_seq=0)
    with pytest.raises(ValueError, match="limit"):
        await history.page("s", limit=0)
    with pytest.raises(ValueError, match="before"):
        await history.page("s", limit=1, before=0)


async def test_redis_down_is_a_clear_history_unavailable_error(tmp_path: Path) -> None:
    with dedicated_redis(tmp_path / "redis") as server:
        client = create_redis(RedisConfig(url=server.url, retries=0, connect_timeout_s=0.5))
        history = RedisChatHistory(client, max_messages=10, ttl_s=60)
        try:
            await history.append("s", _entries(1), last_seq=1)
            server.stop()
            calls = (
                history.append("s", _entries(1), last_seq=2),
                history.window("s", 5),
                history.page("s", limit=5),
                history.page("s", limit=5, before=3),
                history.session_model("s"),
            )
            for call in calls:
                with pytest.raises(HistoryUnavailableError, match=r"Redis\) unavailable .* session 's'") as e:
                    await call
                assert not isinstance(e.value, HistoryBusyError)  # down is not busy
        finally:
            await client.aclose(close_connection_pool=True)


async def test_a_pool_with_no_free_connection_is_busy_not_unavailable(redis_server: RedisServer) -> None:
    client = create_redis(RedisConfig(url=redis_server.url, max_connections=1, pool_timeout_s=0.1))
    history = RedisChatHistory(client, max_messages=10, ttl_s=60)
    try:
        # BLPOP holds the pool's only connection for a second, while Redis itself is fine.
        holder = asyncio.create_task(client.blpop(["nothing-arrives"], timeout=1))
        await asyncio.sleep(0.05)
        with pytest.raises(HistoryBusyError, match=r"Redis\) busy .* session 's'"):
            await history.window("s", 5)
        await holder
        assert await history.window("s", 5) == []  # free again
    finally:
        await client.aclose(close_connection_pool=True)
