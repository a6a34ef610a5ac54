"""Recovery's bookkeeping against a real Redis: what a dead worker held goes back where it
belongs, whichever process finds it dead, and arq's abort set does not grow for ever."""

from __future__ import annotations

import time

import pytest
from arq.constants import abort_jobs_ss
from redis.asyncio import Redis

from sluice.contract import JOB_EXPIRES_MS, WORKERS_KEY, accepting_key, direct_queue_key, queue_key
from sluice.fairqueue import FairQueue
from sluice.ids import new_id
from sluice.recovery import Recovery, recover_worker


@pytest.fixture
async def redis(scratch_redis: Redis) -> Redis:
    return scratch_redis


async def test_a_dead_workers_routed_jobs_go_back_to_its_own_models_queue(redis: Redis) -> None:
    """Found dead by a worker of another model (or a gateway serving other models)."""
    theirs = queue_key("model-b")
    await redis.set(accepting_key("dead"), b"1")
    job_id = new_id()
    now_ms = int(time.time() * 1000)
    queued = await FairQueue(redis).enqueue(
        theirs,
        job_id,
        f"arq:job:{job_id}",
        b"{}",
        worker="dead",
        expires_ms=60_000,
        account="a",
        cost=1,
        now_ms=now_ms,
    )
    assert queued.routed
    await redis.zadd(WORKERS_KEY, {"dead": now_ms - 3_600_000})  # its last beat, long ago
    await recover_worker(redis, "dead", stream_ttl=60)
    assert await redis.zrange(theirs, 0, -1) == [job_id.encode()], "back on model-b's queue, for any worker"
    assert not await redis.exists(direct_queue_key(theirs, "dead"))


async def test_the_sweep_drops_aborts_too_old_to_stop_any_job(redis: Redis) -> None:
    now_ms = time.time() * 1000
    recent, ancient = now_ms - 60_000, now_ms - JOB_EXPIRES_MS - 3_600_000
    await redis.zadd(abort_jobs_ss, {"recent": recent, "ancient": ancient})
    await Recovery(redis, [], heartbeat_ttl=5, stream_ttl=60, job_timeout=600).sweep()
    assert await redis.zrange(abort_jobs_ss, 0, -1) == [b"recent"]
