"""The session registry on a real Redis and a real records directory: issuing, listing, counting, deleting,
and what happens when Redis cannot answer or has lost its data."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from redis.asyncio import Redis
from test_chat_support import dedicated_redis
from tests.support.redis_server import RedisServer

from autobot.config import RedisConfig
from autobot.redis_pool import create_redis
from autobot.sessions import (
    SessionAlreadyOwnedError,
    SessionRegistry,
    SessionStoreUnavailableError,
    ids,
)
from autobot.sessions.registry import title_from

ALICE = ids.client_owner(ids.new_client_token())
BOB = ids.user_owner(b"bob")


@pytest.fixture
async def registry(tmp_path: Path, redis_client: Redis) -> SessionRegistry:
    made = SessionRegistry(redis_client, tmp_path / "transcripts")
    await made.initialize()
    return made


async def test_issued_sessions_belong_to_their_owner_and_are_listed_by_activity(
    registry: SessionRegistry, redis_client: Redis
) -> None:
    first = await registry.create(ALICE)
    second = await registry.create(ALICE)
    theirs = await registry.create(BOB)
    assert await registry.owner_of(first.session_id) == ALICE
    assert await registry.owner_of(theirs.session_id) == BOB
    assert await registry.owner_of(ids.new_session_id()) is None
    assert [s.session_id for s in await registry.list_owned(ALICE)] == [second.session_id, first.session_id]

    await asyncio.sleep(0.002)
    await registry.touch(ALICE, first.session_id, message="  What is\n the   plan?  ", added=2)
    await registry.touch(ALICE, first.session_id, message="second message", added=2)
    listed = await registry.list_owned(ALICE)
    assert [s.session_id for s in listed] == [first.session_id, second.session_id]
    assert (listed[0].title, listed[0].message_count) == ("What is the plan?", 4)
    assert listed[0].updated_at > listed[0].created_at
    # The durable record holds the owner, nothing more.
    record = await registry.read_record(first.session_id)
    assert record is not None
    assert (record.owner, record.created_at) == (ALICE, first.created_at)


async def test_a_turn_counted_after_its_session_was_deleted_brings_nothing_back(
    registry: SessionRegistry, redis_client: Redis
) -> None:
    session = await registry.create(ALICE)
    await registry.remove(ALICE, session.session_id)
    await registry.touch(ALICE, session.session_id, message="late reply", added=2)
    assert not await redis_client.exists(f"chat:session:{session.session_id}")
    assert await registry.list_owned(ALICE) == []
    # Nor does a turn counted under the wrong identity list somebody else's session as its own.
    other = await registry.create(BOB)
    await registry.touch(ALICE, other.session_id, message="x", added=2)
    assert await registry.list_owned(ALICE) == []
    assert await registry.owner_of(other.session_id) == BOB


async def test_after_redis_lost_its_data_the_record_restores_the_session_but_not_a_deleted_one(
    registry: SessionRegistry, redis_client: Redis
) -> None:
    kept = await registry.create(ALICE)
    deleted = await registry.create(ALICE)
    # Another machine deleted this one: its record here survives, the tombstone in Redis decides.
    await redis_client.delete(f"chat:session:{deleted.session_id}")
    await redis_client.set(f"chat:deleted:{deleted.session_id}", "then")
    await redis_client.delete(f"chat:session:{kept.session_id}", f"chat:owner:{ALICE}")

    assert await registry.owner_of(kept.session_id) == ALICE
    assert await registry.owner_of(deleted.session_id) is None
    assert [s.session_id for s in await registry.list_owned(ALICE)] == [kept.session_id]
    restored = await registry.get(kept.session_id)
    assert restored is not None
    assert restored.created_at == kept.created_at


async def test_while_redis_is_down_the_record_answers_and_nothing_else_does(tmp_path: Path) -> None:
    with dedicated_redis(tmp_path / "redis") as server:
        client = create_redis(
            RedisConfig(url=server.url, retries=0, socket_timeout_s=1, connect_timeout_s=0.5)
        )
        try:
            registry = SessionRegistry(client, tmp_path / "transcripts")
            await registry.initialize()
            session = await registry.create(ALICE)
            server.stop()
            assert await registry.owner_of(session.session_id) == ALICE
            with pytest.raises(SessionStoreUnavailableError, match="unavailable"):
                await registry.owner_of(ids.new_session_id())
            with pytest.raises(SessionStoreUnavailableError):
                await registry.create(ALICE)
            with pytest.raises(SessionStoreUnavailableError):
                await registry.list_owned(ALICE)
        finally:
            await client.aclose(close_connection_pool=True)


async def test_a_failed_record_write_leaves_no_claim(registry: SessionRegistry, redis_client: Redis) -> None:
    # The records directory is gone and a file sits in its place: every write into it fails, even as root.
    registry.records_dir.rmdir()
    registry.records_dir.write_bytes(b"")
    with pytest.raises(SessionStoreUnavailableError, match="records directory"):
        await registry.create(ALICE)
    assert [k async for k in redis_client.scan_iter("chat:*")] == []


async def test_adopting_is_idempotent_for_the_owner_and_refused_for_another(
    registry: SessionRegistry, redis_client: Redis
) -> None:
    adopted = await registry.adopt(
        "legacy-1", ALICE, created_at="2024-01-01T00:00:00.000000Z", title="old chat", message_count=6
    )
    assert (adopted.owner, adopted.title, adopted.message_count) == (ALICE, "old chat", 6)
    again = await registry.adopt("legacy-1", ALICE, created_at="2025-01-01", title="other", message_count=1)
    assert again == adopted
    before = await redis_client.hgetall("chat:session:legacy-1")
    with pytest.raises(SessionAlreadyOwnedError):
        await registry.adopt("legacy-1", BOB, created_at="x", title=None, message_count=0)
    assert await redis_client.hgetall("chat:session:legacy-1") == before
    assert await registry.list_owned(BOB) == []
    record = await registry.read_record("legacy-1")
    assert record is not None
    assert record.owner == ALICE


async def test_concurrent_creations_get_distinct_ids(registry: SessionRegistry) -> None:
    made = await asyncio.gather(*(registry.create(ALICE) for _ in range(50)))
    assert len({s.session_id for s in made}) == 50
    assert len(await registry.list_owned(ALICE)) == 50
    assert sorted(registry.recorded_ids()) == sorted(s.session_id for s in made)


def test_titles_are_one_short_line() -> None:
    assert title_from("hello\n\nworld") == "hello world"
    long = title_from("word " * 100)
    assert len(long) == 80
    assert long.endswith("…")


async def test_the_registry_needs_nothing_but_its_acl_prefix(
    registry: SessionRegistry, redis_client: Redis, redis_server: RedisServer
) -> None:
    session = await registry.create(ALICE)
    await registry.touch(ALICE, session.session_id, message="hi", added=2)
    await registry.remove(ALICE, session.session_id)
    keys = {k.decode() async for k in redis_client.scan_iter("*")}
    assert keys
    # main-backend's own prefix: browser-service may use sessions:*, so nothing of the registry lives there.
    assert all(k.startswith("chat:") for k in keys)
