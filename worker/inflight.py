"""The jobs this worker is running, watched for their gateway going away.

A gateway killed mid-stream leaves no reader: its jobs are aborted through arq, so the engine
does not generate for nobody; one whose gateway is already gone when it is picked up is not run
at all. (Each running job is also recorded in the worker's running set, for recovery should the
worker be killed: by the claim that takes it and the transaction that ends it, ``worker/slots.py``.)
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

from sluice.contract import Job, gateway_key
from sluice.registry import Steady

log = logging.getLogger("sluice.worker.inflight")


class InFlight:
    def __init__(self, redis: Redis, heartbeat_ttl: float) -> None:
        self._redis = redis
        self._ttl = heartbeat_ttl
        self._readers: dict[str, str] = {}  # job id -> its gateway
        self._present: dict[str, float] = {}  # gateway -> when it was last seen present

    async def start(self, job: Job) -> bool:
        """Watch the job's gateway; ``False`` if it is already gone. A gateway seen present
        within the last watch interval is taken to be: a job per request would otherwise cost a
        round trip to learn what the watch learns for all of them, and finds out as soon."""
        if job.gateway and not await self._is_present(job.gateway):
            return False
        self._readers[job.id] = job.gateway
        return True

    def end(self, job_id: str) -> None:
        self._readers.pop(job_id, None)

    async def _is_present(self, gateway: str) -> bool:
        seen = self._present.get(gateway)
        if seen is not None and time.monotonic() - seen < self._ttl / 3:
            return True
        present = bool(await cast(Awaitable[int], self._redis.exists(gateway_key(gateway))))
        if present:
            self._present[gateway] = time.monotonic()
        return present

    async def orphans(self) -> list[str]:
        """Running jobs whose gateway is gone."""
        gateways = sorted({g for g in self._readers.values() if g})
        if not gateways:
            self._present.clear()  # only running jobs' gateways are remembered: pods come and go
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for gateway in gateways:
                pipe.exists(gateway_key(gateway))
            alive = dict(zip(gateways, await pipe.execute(), strict=True))
        now = time.monotonic()
        self._present = {gateway: now for gateway, present in alive.items() if present}
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
