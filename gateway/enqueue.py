"""Where a job is enqueued: one arq job per request, on its model's queue.

The job is written in arq's own format (``arq.jobs.serialize_job``, the job key and the queue's
sorted set), in one MULTI round trip. ``ArqRedis.enqueue_job`` takes three (WATCH, EXISTS, then
MULTI) to refuse a job id it already holds; request ids are fresh uuid4s, which never collide.
"""

from __future__ import annotations

import time

from arq.connections import ArqRedis
from arq.constants import abort_jobs_ss, job_key_prefix
from arq.jobs import serialize_job

from sluice.contract import GENERATE, Job, encode, queue_key, serialize_arq_job
from sluice.registry import live_workers

#: arq's default lifetime of a queued job's data (its ``expires_extra_ms``).
JOB_EXPIRES_MS = 86_400_000


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

    async def busy(self, model: str, heartbeat_ttl: float) -> bool:
        """No worker would start a job now: jobs are already waiting, or no worker is alive.

        Workers poll every few milliseconds, so a job still queued means every slot is taken.
        """
        waiting: int = await self._redis.zcard(queue_key(model))
        return waiting > 0 or await live_workers(self._redis, heartbeat_ttl) == 0
