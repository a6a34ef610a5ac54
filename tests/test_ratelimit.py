"""Token reservations against a real Redis, with a clock the test moves: the window, resizing,
and a running total that is counted afresh when it is lost."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from gateway.ratelimit import EffectiveLimits, RateLimiter
from sluice.keys import KeyRecord
from sluice.redis_server import EmbeddedRedis


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def redis(redis_server: EmbeddedRedis) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


async def test_tokens_are_reserved_resized_and_freed_as_they_leave_the_window(redis: Redis) -> None:
    key = KeyRecord(id="window", account="acct", hash="h")
    clock = Clock()
    limiter = RateLimiter(redis, EffectiveLimits(rpm=1000, tpm=100, concurrency=100), 600, clock)
    first = await limiter.admit(key, "a", 60)
    assert first.refused is None
    assert first.quota.tokens_left == 40
    clock.now += 10
    refused = await limiter.admit(key, "b", 60)
    assert refused.refused == "tokens"
    assert refused.retry_after == 50, "when the first reservation leaves the minute's window"
    await limiter.release(key, "a", reserved=60, actual=10)  # it used 10 of its 60
    second = await limiter.admit(key, "c", 60)
    assert second.refused is None
    assert second.quota.tokens_left == 30
    clock.now += 50  # the first (10 tokens) leaves the window; the second (60) stays
    third = await limiter.admit(key, "d", 40)
    assert third.refused is None
    assert third.quota.tokens_left == 0
    clock.now += 61  # both left
    assert (await limiter.admit(key, "e", 100)).quota.tokens_left == 0


async def test_a_lost_running_total_is_counted_again_from_the_reservations(redis: Redis) -> None:
    key = KeyRecord(id="lost", account="acct", hash="h")
    clock = Clock()
    limiter = RateLimiter(redis, EffectiveLimits(rpm=1000, tpm=100, concurrency=100), 600, clock)
    for i in range(3):
        await limiter.admit(key, f"r{i}", 20)
    await redis.delete("sluice:rl:{lost}:reserved:total")
    assert (await limiter.admit(key, "r3", 20)).quota.tokens_left == 20
    assert (await limiter.admit(key, "r4", 40)).refused == "tokens"
