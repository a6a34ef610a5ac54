"""The jobs this worker is running, as Redis must know them.

Each is recorded in the worker's running set, so that if the worker is killed, recovery
(``sluice.recovery``) finds and re-runs or ends them within seconds. And each is watched for its
gateway going away (a gateway killed mid-stream leaves no reader): such a job is aborted through
arq, so the engine does not generate for nobody; one whose gateway is already gone when it is
picked up is not run at all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import cast

from arq.constants import abort_jobs_ss
from redis.asyncio import Redis
from redis.exceptions import RedisError

from sluice.contract import Job, gateway_key, running_key
from sluice.registry import Steady

log = logging.getLogger("sluice.worker.inflight")


class InFlight:
    def __init__(self, redis: Redis, worker_id: str, heartbeat_ttl: float) -> None:
        self._redis = redis
        self._key = running_key(worker_id)
        self._ttl = heartbeat_ttl
        self._readers: dict[str, str] = {}  # job id -> its gateway

    async def start(self, job: Job) -> bool:
        """Record the job as running here; ``False`` if its gateway is already gone."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.sadd(self._key, job.id)
            if job.gateway:
                pipe.exists(gateway_key(job.gateway))
            results = await pipe.execute()
        if job.gateway and not results[-1]:
            await self.end(job.id)
            return False
        self._readers[job.id] = job.gateway
        return True

    async def end(self, job_id: str) -> None:
        self._readers.pop(job_id, None)
        await cast(Awaitable[int], self._redis.srem(self._key, job_id))

    async def orphans(self) -> list[str]:
        """Running jobs whose gateway is gone."""
        gateways = sorted({g for g in self._readers.values() if g})
        if not gateways:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for gateway in gateways:
                pipe.exists(gateway_key(gateway))
            alive = dict(zip(gateways, await pipe.execute(), strict=True))
        return [job for job, gateway in self._readers.items() if gateway and not alive[gateway]]

    async def watch(self) -> None:
        """Abort orphaned jobs, every third of the TTL, until cancelled; but only once Redis has
        been reachable for a whole TTL, so that gateways can renew presence lost in an outage."""
        steady = Steady(self._ttl)
        while True:
            await asyncio.sleep(self._ttl / 3)
            try:
                orphans = await self.orphans()
                if steady.reached() and orphans:
                    log.info("aborting %d jobs whose gateway is gone", len(orphans))
                    now = int(time.time() * 1000)
                    await self._redis.zadd(abort_jobs_ss, dict.fromkeys(orphans, now))
                    self._readers.update(dict.fromkeys(orphans, ""))  # asked once is enough
            except (RedisError, OSError) as exc:
                steady.lost()
                log.warning("orphan check skipped (Redis unavailable): %s", exc)
