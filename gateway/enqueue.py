"""Where a job is enqueued: one arq job per request, on its model's queue."""

from __future__ import annotations

import time

from arq.connections import ArqRedis
from arq.constants import abort_jobs_ss

from sluice.contract import GENERATE, Job, encode, queue_key
from sluice.errors import unavailable
from sluice.registry import live_workers


class JobQueue:
    def __init__(self, redis: ArqRedis) -> None:
        self._redis = redis

    async def submit(self, job: Job) -> None:
        queued = await self._redis.enqueue_job(
            GENERATE, encode(job), _job_id=job.id, _queue_name=queue_key(job.model)
        )
        if queued is None:  # arq refuses a job id it already holds
            raise unavailable(f"job {job.id} is already queued")

    async def abort(self, job_id: str) -> None:
        """Ask arq to cancel the job: dropped if still queued, cancelled on its worker if running."""
        await self._redis.zadd(abort_jobs_ss, {job_id: int(time.time() * 1000)})

    async def busy(self, model: str, heartbeat_ttl: float) -> bool:
        """No worker would start a job now: jobs are already waiting, or no worker is alive.

        Workers poll every few milliseconds, so a job still queued means every slot is taken.
        """
        waiting: int = await self._redis.zcard(queue_key(model))
        return waiting > 0 or await live_workers(self._redis, heartbeat_ttl) == 0
