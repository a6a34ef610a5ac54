"""Recovery's bookkeeping against a real Redis: what a dead worker held goes back where it
belongs, whichever process finds it dead, and arq's abort set does not grow for ever."""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import cast

import pytest
from arq.connections import ArqRedis
from arq.constants import abort_jobs_ss, in_progress_key_prefix, job_key_prefix
from redis.asyncio import Redis

from gateway.enqueue import JobQueue
from sluice.contract import (
    JOB_EXPIRES_MS,
    WORKERS_KEY,
    Delta,
    Done,
    Event,
    GenerationInput,
    Job,
    Started,
    Usage,
    accepting_key,
    direct_queue_key,
    events_key,
    queue_key,
    running_key,
)
from sluice.events import Along
from sluice.fairqueue import Claims, FairQueue
from sluice.ids import new_id
from sluice.recovery import Recovery, leave, recover_worker
from sluice.registry import claim
from worker.publish import EventPublisher


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


async def test_a_stalled_workers_writes_for_a_job_given_to_another_change_nothing(redis: Redis) -> None:
    """A worker stalled past its heartbeat resumes (it exits at its next beat) after recovery
    gave its job to another worker: its run's events reach no client, and its end of the job
    leaves the new run's claim and the job alone."""
    job = Job(id=new_id(), model="model-s", input=GenerationInput(prompt="Hi", max_tokens=2))
    await JobQueue(ArqRedis(connection_pool=redis.connection_pool)).submit(job, account="a", cost=1)
    queue, now_ms = queue_key(job.model), int(time.time() * 1000)
    stalled, other = Claims(redis, "stalled"), Claims(redis, "other")
    assert [c.id for c in await stalled.take(queue, 1, 60_000)] == [job.id]
    await redis.zadd(WORKERS_KEY, {"stalled": now_ms - 3_600_000})  # its last beat, long ago
    assert await recover_worker(redis, "stalled", stream_ttl=60) == {job.id: "requeued"}
    assert [c.id for c in await other.take(queue, 1, 60_000)] == [job.id]

    end = stalled.end_of(queue, job.id)
    done = Done(finish_reason="length", usage=Usage(prompt_tokens=1, completion_tokens=2, total_tokens=3))
    events: list[Event] = [Started(worker="stalled", attempt=1), Delta(text="stale", tokens=2), done]
    await EventPublisher(redis, ttl_seconds=60).publish(job.id, events, Along(end=end, owner=end.running))

    assert await redis.xlen(events_key(job.id)) == 0, "no client sees the stalled run"
    assert await redis.zscore(queue, job.id) is not None, "still in arq's queue until its run ends"
    assert await cast(Awaitable[int], redis.sismember(running_key("other"), job.id)), "the other's"
    assert await redis.exists(in_progress_key_prefix + job.id, job_key_prefix + job.id) == 2


async def test_a_stopping_workers_routed_job_whose_end_was_not_written_runs_elsewhere(redis: Redis) -> None:
    """Redis was away as the job ended (its end not written, its mark left): once Redis is back,
    the worker's last step as it stops recovers it, rather than leave it in a queue nobody polls."""
    job = await routed_and_taken(redis, "leaving", GenerationInput(prompt="Hi", max_tokens=2))
    queue = queue_key(job.model)
    await redis.zadd(WORKERS_KEY, {"leaving": int(time.time() * 1000)})

    assert await leave(redis, "leaving", queue, stream_ttl=60) == {job.id: "requeued"}
    assert [c.id for c in await Claims(redis, "other").take(queue, 1, 60_000)] == [job.id], "run by another"
    assert not await redis.exists(direct_queue_key(queue, "leaving"), running_key("leaving"))
    assert await redis.zscore(WORKERS_KEY, "leaving") is None, "it left the registry"


async def test_a_dead_workers_routed_stream_already_shown_ends_and_is_not_handed_back(redis: Redis) -> None:
    """Its client was told (an error event after the text it saw); the job leaves every queue,
    rather than go back to the model's queue for a worker to find its data gone."""
    job = await routed_and_taken(redis, "dead", GenerationInput(prompt="Hi", max_tokens=2, stream=True))
    queue = queue_key(job.model)
    events: list[Event] = [Started(worker="dead", attempt=1), Delta(text="Hel", tokens=1)]
    await EventPublisher(redis, ttl_seconds=60).publish(job.id, events)
    await redis.zadd(WORKERS_KEY, {"dead": int(time.time() * 1000) - 3_600_000})

    assert await recover_worker(redis, "dead", stream_ttl=60) == {job.id: "failed"}
    assert await redis.zrange(queue, 0, -1) == [], "not handed back"
    assert not await redis.exists(direct_queue_key(queue, "dead"))


async def test_a_worker_taken_over_as_it_leaves_leaves_its_jobs_to_the_taker(redis: Redis) -> None:
    """Its last ends rode out a Redis blip past its heartbeat's TTL, and another process's
    recovery took it over: the job is recovered by that process alone, never twice (a second
    recovery could clear the mark of a worker that took the job up again)."""
    job = await routed_and_taken(redis, "leaving", GenerationInput(prompt="Hi", max_tokens=2))
    await redis.zadd(WORKERS_KEY, {"leaving": int(time.time() * 1000) - 3_600_000})
    assert await claim(redis, "leaving"), "the other process's recovery, first"

    assert await leave(redis, "leaving", queue_key(job.model), stream_ttl=60) == {}
    assert await redis.exists(in_progress_key_prefix + job.id), "left for the taker to recover"
    assert await cast(Awaitable[int], redis.sismember(running_key("leaving"), job.id))


async def routed_and_taken(redis: Redis, worker: str, request: GenerationInput) -> Job:
    """A job routed to ``worker`` (its own queue), which has taken it up."""
    job = Job(id=new_id(), model=f"model-{worker}", input=request)
    await redis.set(accepting_key(worker), b"1")
    queued = await JobQueue(ArqRedis(connection_pool=redis.connection_pool)).submit(
        job, account="a", cost=1, worker=worker
    )
    assert queued.routed
    taken = await Claims(redis, worker).take(direct_queue_key(queue_key(job.model), worker), 1, 60_000)
    assert [c.id for c in taken] == [job.id]
    return job
