"""Where a job is enqueued: one arq job per request, on its model's queue.

The job is written in arq's own format (``arq.jobs.serialize_job``, the job key and the queue's
sorted set), in one MULTI round trip. ``ArqRedis.enqueue_job`` takes three (WATCH, EXISTS, then
MULTI) to refuse a job id it already holds; request ids are fresh uuid4s, which never collide.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from arq.connections import ArqRedis
from arq.constants import abort_jobs_ss, job_key_prefix
from arq.jobs import serialize_job
from redis.asyncio import Redis

from sluice.contract import GENERATE, Job, encode, queue_key, serialize_arq_job
from sluice.queues import head
from sluice.registry import live_slots

#: arq's default lifetime of a queued job's data (its ``expires_extra_ms``).
JOB_EXPIRES_MS = 86_400_000


@dataclass(frozen=True)
class Backlog:
    """A queue's jobs that wait for a worker (not those running), and how long the oldest has."""

    waiting: int
    running: int
    oldest_wait: float


async def backlog(redis: Redis, queue: str) -> Backlog:
    total, entries = await head(redis, queue)
    running = sum(entry.running for entry in entries)
    waiting = [entry.score for entry in entries if not entry.running]
    # A deferred job's score is in the future: it has not started waiting yet.
    oldest = max(0.0, time.time() - waiting[0] / 1000) if waiting else 0.0
    return Backlog(waiting=total - running, running=running, oldest_wait=oldest)


class JobQueue:
    def __init__(self, redis: ArqRedis) -> None:
        self._redis = redis

    async def submit(self, job: Job) -> None:
        enqueued_ms = int(job.enqueued_at * 1000)
        data = serialize_job(GENERATE, (encode(job),), {}, None, enqueued_ms, serializer=serialize_arq_job)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.psetex(job_key_prefix + job.id, JOB_EXPIRES_MS, data)
            pipe.zadd(queue_key(job.model), {job.id: enqueued_ms})
            await pipe.execute()

    async def abort(self, job_id: str) -> None:
        """Ask arq to cancel the job: dropped if still queued, cancelled on its worker if running."""
        await self._redis.zadd(abort_jobs_ss, {job_id: int(time.time() * 1000)})

    async def backlog(self, model: str) -> Backlog:
        return await backlog(self._redis, queue_key(model))

    async def surely_within(self, model: str, depth: int, max_wait: float) -> bool:
        """One round trip that settles the common case: fewer entries than ``depth`` in all, and
        the oldest (running or not) younger than ``max_wait``, so no limit can be passed."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zcard(queue_key(model))
            pipe.zrange(queue_key(model), 0, 0, withscores=True)
            total, oldest = await pipe.execute()
        age = time.time() - oldest[0][1] / 1000 if oldest else 0.0
        return int(total) < depth and age < max_wait

    async def busy(self, model: str, heartbeat_ttl: float) -> bool:
        """No worker would start a job now: jobs are already waiting (workers poll every few
        milliseconds, so a job still queued means every slot is taken), or every live worker's
        slots are running jobs, or no worker is alive."""
        queue = await self.backlog(model)
        slots = await live_slots(self._redis, heartbeat_ttl, queue_key(model))
        return queue.waiting > 0 or queue.running >= slots
