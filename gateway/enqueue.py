"""Where a job is enqueued: one arq job per request, on its model's queue."""

from __future__ import annotations

import time

from arq.connections import ArqRedis
from arq.constants import abort_jobs_ss

from sluice.contract import GENERATE, Job, encode, queue_key
from sluice.errors import unavailable


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
