"""The worker registry in Redis: live workers advertise themselves; silence past the TTL means gone.

Workers write it (:func:`heartbeat`); the gateway reads it (:func:`live_workers`) for readiness.
"""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from sluice.contract import WORKERS_KEY, WorkerInfo, encode, worker_key


async def beat(redis: Redis, info: WorkerInfo, ttl: float) -> None:
    now_ms = int(time.time() * 1000)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zadd(WORKERS_KEY, {info.id: now_ms})
        # Forget workers silent for ten TTLs (killed ones never deregister).
        pipe.zremrangebyscore(WORKERS_KEY, "-inf", now_ms - int(ttl * 10_000))
        pipe.set(worker_key(info.id), encode(info), px=int(ttl * 1000))
        await pipe.execute()


async def heartbeat(redis: Redis, info: WorkerInfo, ttl: float) -> None:
    """Refresh the advertisement three times per TTL until cancelled."""
    while True:
        await beat(redis, info, ttl)
        await asyncio.sleep(ttl / 3)


async def deregister(redis: Redis, worker_id: str) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zrem(WORKERS_KEY, worker_id)
        pipe.delete(worker_key(worker_id))
        await pipe.execute()


async def live_workers(redis: Redis, ttl: float) -> int:
    """Workers whose last heartbeat is younger than ``ttl`` seconds."""
    since = int((time.time() - ttl) * 1000)
    count: int = await redis.zcount(WORKERS_KEY, since, "+inf")
    return count
