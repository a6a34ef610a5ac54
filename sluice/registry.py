"""The registry in Redis of live processes: workers and gateways refresh their presence; silence
past the TTL means gone.

Workers write :func:`heartbeat`; the gateway reads :func:`live_workers` for readiness, and
recovery (``sluice.recovery``) takes over the jobs of workers silent past the TTL, claiming each
dead worker once (:func:`claim`) and leaving a tombstone, so that a worker that was only stalled
learns at its next beat that its jobs were taken from it (:class:`Evicted`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from sluice.contract import (
    WORKERS_KEY,
    WorkerInfo,
    accepting_key,
    claim_receipts_key,
    decode_worker,
    encode,
    gateway_key,
    running_key,
    tombstone_key,
    worker_key,
)

log = logging.getLogger("sluice.registry")

#: How long a claimed worker's tombstone stays: far longer than any stall worth surviving.
TOMBSTONE_SECONDS = 3600


class Evicted(Exception):
    """This worker was silent past the TTL and its jobs were recovered elsewhere."""


class Steady:
    """Whether Redis has been reachable for a whole TTL, as this process saw it. Silence is only
    judged then: after an outage (or restart) every heartbeat and presence key is stale, and the
    live processes need a TTL to renew theirs."""

    def __init__(self, ttl: float) -> None:
        self._ttl = ttl
        self._since: float | None = None

    def reached(self) -> bool:
        """Redis answered just now; ``True`` once it has for a whole TTL."""
        now = time.monotonic()
        self._since = self._since if self._since is not None else now
        return now - self._since >= self._ttl

    def lost(self) -> None:
        self._since = None


async def beat(redis: Redis, info: WorkerInfo, ttl: float) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zadd(WORKERS_KEY, {info.id: int(time.time() * 1000)})
        pipe.set(worker_key(info.id), encode(info), px=int(ttl * 1000))
        if info.draining:
            pipe.delete(accepting_key(info.id))
        else:
            pipe.set(accepting_key(info.id), b"1", px=int(ttl * 1000))
        pipe.exists(tombstone_key(info.id))
        *_, evicted = await pipe.execute()
    if evicted:
        raise Evicted(f"worker {info.id} was silent for over {ttl:.0f}s and its jobs were recovered")


async def heartbeat(redis: Redis, info: Callable[[], WorkerInfo], ttl: float) -> None:
    """Refresh the advertisement (as ``info`` gives it now) three times per TTL until cancelled;
    Redis being away is waited out, :class:`Evicted` is raised."""
    while True:
        try:
            await beat(redis, info(), ttl)
        except (RedisError, OSError) as exc:
            log.warning("heartbeat not written (Redis unavailable): %s", exc)
        await asyncio.sleep(ttl / 3)


async def stop_accepting(redis: Redis, worker_id: str) -> None:
    """From now on, jobs meant for this worker go to the shared queue instead."""
    await redis.delete(accepting_key(worker_id))


async def deregister(redis: Redis, worker_id: str) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zrem(WORKERS_KEY, worker_id)
        pipe.delete(
            worker_key(worker_id),
            running_key(worker_id),
            accepting_key(worker_id),
            claim_receipts_key(worker_id),
        )
        await pipe.execute()


async def live_workers(redis: Redis, ttl: float) -> int:
    """Workers whose last heartbeat is younger than ``ttl`` seconds."""
    since = int((time.time() - ttl) * 1000)
    count: int = await redis.zcount(WORKERS_KEY, since, "+inf")
    return count


async def live_worker_ids(redis: Redis, ttl: float) -> list[str]:
    since = int((time.time() - ttl) * 1000)
    ids: list[bytes] = await redis.zrangebyscore(WORKERS_KEY, since, "+inf")
    return [worker_id.decode() for worker_id in ids]


async def live_adverts(redis: Redis, ttl: float, queue: str) -> list[WorkerInfo]:
    """What the live workers of ``queue`` that take jobs (not draining) advertise."""
    ids = await live_worker_ids(redis, ttl)
    if not ids:
        return []
    adverts = [decode_worker(raw) for raw in await redis.mget([worker_key(i) for i in ids]) if raw]
    return [info for info in adverts if info.queue == queue and not info.draining]


async def live_slots(redis: Redis, ttl: float, queue: str) -> int:
    """Jobs the live workers of ``queue`` can run at once."""
    return sum(info.slots for info in await live_adverts(redis, ttl, queue))


async def silent_workers(redis: Redis, ttl: float) -> list[str]:
    """Workers whose last heartbeat is older than ``ttl`` seconds."""
    until = int((time.time() - ttl) * 1000)
    ids: list[bytes] = await redis.zrangebyscore(WORKERS_KEY, "-inf", f"({until}")
    return [worker_id.decode() for worker_id in ids]


async def claim(redis: Redis, worker_id: str) -> bool:
    """Take a silent worker over; exactly one caller gets ``True`` for each."""
    if not await redis.zrem(WORKERS_KEY, worker_id):
        return False
    await redis.set(tombstone_key(worker_id), b"1", ex=TOMBSTONE_SECONDS)
    return True


async def gateway_presence(redis: Redis, gateway_id: str, ttl: float) -> None:
    """Keep a gateway process's presence key alive until cancelled (then it is removed).

    Refreshed every third of ``ttl`` but kept for three: workers abort the jobs of a gateway whose
    key is missing, so a short Redis restart (during which nobody can refresh) must not lose it."""
    try:
        while True:
            try:
                await redis.set(gateway_key(gateway_id), b"1", px=int(ttl * 3000))
            except (RedisError, OSError) as exc:
                log.warning("gateway presence not written (Redis unavailable): %s", exc)
            await asyncio.sleep(ttl / 3)
    finally:
        with contextlib.suppress(RedisError, OSError):
            await redis.delete(gateway_key(gateway_id))
