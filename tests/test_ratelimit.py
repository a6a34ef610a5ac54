"""Token reservations against a real Redis, with a clock the test moves: the window, resizing,
and a running total that is counted afresh when it is lost."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from gateway.ratelimit import Admission, EffectiveLimits, RateLimiter
from sluice.contract import Done, Reservation, Usage
from sluice.events import Along
from sluice.fairqueue import Enqueued, FairQueue, QueueLimits
from sluice.keys import KeyRecord
from sluice.redis_server import EmbeddedRedis
from worker.publish import EventPublisher


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


async def test_a_jobs_last_write_settles_its_reservation_and_a_second_settling_changes_nothing(
    redis: Redis,
) -> None:
    """The worker settles a complete answer's reservation in the write of its end: the key's slot
    is free and its unused tokens are back by the time the gateway reads that end, with no
    release of the gateway's own; a release after it (a gateway that also gave it back) is a
    no-op."""
    key = KeyRecord(id="settled", account="acct", hash="h")
    limiter = RateLimiter(redis, EffectiveLimits(rpm=1000, tpm=100, concurrency=1), 600, Clock())
    assert (await limiter.admit(key, "job", 80)).quota.tokens_left == 20
    assert (await limiter.admit(key, "next", 10)).refused == "concurrency"
    done = Done(finish_reason="stop", usage=Usage(prompt_tokens=5, completion_tokens=25, total_tokens=30))
    await EventPublisher(redis, ttl_seconds=60).publish(
        "job", [done], Along(settle=(Reservation(key.id, 80), 30))
    )
    await limiter.release(key, "job", reserved=80, actual=80)  # too late: changes nothing
    admitted = await limiter.admit(key, "next", 10)
    assert admitted.refused is None, "the settled job still held the key's one slot"
    assert admitted.quota.tokens_left == 60  # 100 - 30 used - 10 now


async def test_a_lost_running_total_is_counted_again_from_the_reservations(redis: Redis) -> None:
    key = KeyRecord(id="lost", account="acct", hash="h")
    clock = Clock()
    limiter = RateLimiter(redis, EffectiveLimits(rpm=1000, tpm=100, concurrency=100), 600, clock)
    for i in range(3):
        await limiter.admit(key, f"r{i}", 20)
    await redis.delete("sluice:rl:{lost}:reserved:total")
    assert (await limiter.admit(key, "r3", 20)).quota.tokens_left == 20
    assert (await limiter.admit(key, "r4", 40)).refused == "tokens"


async def test_the_admission_gates_the_enqueue_and_a_job_the_queue_refuses_holds_none(redis: Redis) -> None:
    """Admission runs in the enqueue's script: a request its limits refuse queues nothing, and one
    the queue's backpressure refuses takes nothing of the key's requests or tokens."""
    key = KeyRecord(id="gated", account="acct", hash="h")
    limiter = RateLimiter(redis, EffectiveLimits(rpm=2, tpm=200, concurrency=100), 600, Clock())
    fair = FairQueue(redis)
    queue = "sluice:queue:gate-test"

    async def enqueue(
        job_id: str, cost: int, limits: QueueLimits | None = None
    ) -> tuple[Enqueued, Admission]:
        admission = limiter.gate(key, job_id, cost)
        now = int(time.time() * 1000)
        queued = await fair.enqueue(
            queue,
            job_id,
            f"job:{job_id}",
            b"{}",
            worker=None,
            expires_ms=60_000,
            account="acct",
            cost=cost,
            now_ms=now,
            limits=limits,
            gate=admission.gate,
        )
        assert queued.gate is not None
        return queued, admission.read(queued.gate)

    queued, admitted = await enqueue("a", 60)
    assert (queued.refused, admitted.refused, admitted.quota.tokens_left) == (None, None, 140)
    refused, admitted = await enqueue("b", 60, QueueLimits(depth=1, wait=60.0))  # "a" waits ahead
    assert refused.refused is not None
    assert admitted.refused is None
    # Its quota headers say what is left with it refused: as after "a" alone.
    assert (admitted.quota.requests_left, admitted.quota.tokens_left) == (1, 140)
    assert (admitted.quota.requests_reset, admitted.quota.tokens_reset) == (0, 0)
    queued, admitted = await enqueue("c", 40)
    assert (queued.refused, admitted.refused) == (None, None), "the refused job kept its admission"
    assert (admitted.quota.requests_left, admitted.quota.tokens_left) == (0, 100)
    _, limited = await enqueue("d", 1)
    assert limited.refused == "requests"
    assert [job.decode() for job in await redis.zrange(queue, 0, -1)] == ["a", "c"], (
        "only admitted jobs queue"
    )


async def test_a_dead_gateways_requests_stop_holding_their_keys_concurrency(redis: Redis) -> None:
    """A request in flight holds its key's concurrent slot for a lease that its gateway renews: a
    gateway that dies stops renewing, and the slot frees within the lease (not at the request's
    deadline, minutes later), while a live gateway's request keeps it for as long as it runs."""
    key = KeyRecord(id="leases", account="acct", hash="h")
    clock = Clock()
    limits = EffectiveLimits(rpm=1000, tpm=1000, concurrency=1)
    live = RateLimiter(redis, limits, 15, clock)
    dead = RateLimiter(redis, limits, 15, clock)  # admits once, then renews nothing
    assert (await dead.admit(key, "orphan", 1)).refused is None
    assert (await live.admit(key, "waits", 1)).refused == "concurrency"
    clock.now += 16
    assert (await live.admit(key, "runs", 1)).refused is None, "the dead gateway's lease held on"
    for _ in range(3):  # 30 s in flight, renewed every 10 s
        clock.now += 10
        await live.renew()
    assert (await dead.admit(key, "refused", 1)).refused == "concurrency", "a renewed lease lapsed"
    await live.release(key, "runs", reserved=1, actual=1)
    await live.renew()  # a released request is not brought back
    assert (await dead.admit(key, "next", 1)).refused is None
