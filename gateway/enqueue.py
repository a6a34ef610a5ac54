"""Where a job is enqueued: one arq job per request, on its model's queue, in fair-share order.

The job is written in arq's own format (``arq.jobs.serialize_job``, the job key and the queue's
sorted set) in one atomic script that also gives it its place: its score is its account's
fair-share tag (``sluice/fairqueue.py``), not its arrival time. ``ArqRedis.enqueue_job`` takes
three round trips (WATCH, EXISTS, then MULTI) to refuse a job id it already holds; request ids
are fresh UUIDv7s, which never collide.
"""

from __future__ import annotations

import logging
import time

from arq.connections import ArqRedis
from arq.constants import abort_jobs_ss, job_key_prefix
from arq.jobs import serialize_job
from redis.exceptions import RedisError

from sluice.contract import (
    ABORTS_CHANNEL,
    GENERATE,
    JOB_EXPIRES_MS,
    Job,
    encode,
    queue_key,
    serialize_arq_job,
)
from sluice.fairqueue import Backlog, Enqueued, FairQueue, Gate, QueueLimits
from sluice.multiplex import Multiplexed
from sluice.registry import live_slots
from sluice.retry import ride_out

log = logging.getLogger("sluice.gateway.enqueue")


class JobQueue:
    def __init__(self, redis: ArqRedis, connection: Multiplexed | None = None) -> None:
        """``connection``: where jobs are enqueued, if not on ``redis`` (``sluice/multiplex.py``)."""
        self._redis = redis
        self._fair = FairQueue(redis, connection=connection)

    async def submit(
        self,
        job: Job,
        *,
        account: str,
        cost: int,
        worker: str | None = None,
        limits: QueueLimits | None = None,
        gate: Gate | None = None,
    ) -> Enqueued:
        """Queue ``job`` at ``account``'s place; ``cost`` (its tokens) moves that place on. With
        ``worker``, on that worker's own queue (``gateway/routing.py``) if it still takes jobs,
        else on the model's. ``limits``: refused instead (nothing queued) if the model's queue
        is past them ahead of it, checked in the same script (backpressure costs no round trip
        of its own). ``gate``: only if it admits the job, also in the same script (rate limits,
        ``gateway/ratelimit.py``)."""
        enqueued_ms = int(job.enqueued_at * 1000)
        data = serialize_job(GENERATE, (encode(job),), {}, None, enqueued_ms, serializer=serialize_arq_job)
        return await self._fair.enqueue(
            queue_key(job.model),
            job.id,
            job_key_prefix + job.id,
            data,
            worker=worker,
            expires_ms=JOB_EXPIRES_MS,
            account=account,
            cost=cost,
            now_ms=enqueued_ms,
            limits=limits,
            gate=gate,
        )

    async def abort(self, job_id: str) -> None:
        """Ask arq to cancel the job: dropped if still queued, cancelled on its worker if running
        (woken to see it now, not at its next poll). Asked again over a Redis blip (it is safe
        to repeat); if Redis stays away, the job runs on for nobody, and that is logged."""

        async def abort() -> None:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.zadd(abort_jobs_ss, {job_id: int(time.time() * 1000)})
                pipe.publish(ABORTS_CHANNEL, b"1")
                await pipe.execute()

        try:
            await ride_out(abort, f"job {job_id}'s abort", log)
        except (RedisError, OSError) as error:
            log.warning("job %s not aborted (Redis unavailable): %s", job_id, error)

    async def backlog(self, model: str, account: str | None = None) -> Backlog:
        """What waits ahead of ``account``'s next job (``None``: all that waits)."""
        return await self._fair.backlog(queue_key(model), account)

    async def busy(self, model: str, heartbeat_ttl: float) -> bool:
        """No worker would start a job now: jobs are already waiting (workers poll every few
        milliseconds, so a job still queued means every slot is taken), or every live worker's
        slots are running jobs, or no worker is alive."""
        queue = await self.backlog(model)
        slots = await live_slots(self._redis, heartbeat_ttl, queue_key(model))
        return queue.waiting > 0 or queue.running >= slots
