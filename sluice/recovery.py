"""Recovery of the jobs a killed worker held: run again at once, or ended with a clear error.

A worker killed with SIGKILL never deregisters and never finishes its jobs; arq alone would run
them again only when their in-progress key expires (``job_timeout`` + 10 s) and knows nothing of
a stream already half-sent. So every worker and every gateway process runs :class:`Recovery`: a
worker silent past the heartbeat TTL is claimed by exactly one of them, and each job it was
running is

- released to run again (arq picks it up with its attempt count raised) when nothing of its
  answer has been shown yet, or when its client waits for a whole answer (the gateway replaces the
  first attempt's text with the new one);
- ended with a retryable error event, and dropped, when part of a stream was already sent: the
  client is told at once, rather than shown the answer twice.

A worker killed in the round trip between arq claiming a job and the worker recording it leaves a
claim no live worker records: such claims older than a TTL are recovered the same way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal, cast

from arq.constants import abort_jobs_ss, in_progress_key_prefix, job_key_prefix, retry_key_prefix
from arq.jobs import deserialize_job
from redis.asyncio import Redis
from redis.exceptions import RedisError

from sluice.contract import (
    JOB_EXPIRES_MS,
    WORKERS_KEY,
    Delta,
    ToolCalls,
    decode_event,
    decode_job,
    deserialize_arq_job,
    direct_queue_key,
    events_key,
    pickup_channel,
    queue_key,
    recovering_key,
    running_key,
)
from sluice.errors import interrupted
from sluice.events import Batch, EventLog, failed
from sluice.fairqueue import FairQueue
from sluice.queues import head
from sluice.registry import Steady, claim, deregister, silent_workers

log = logging.getLogger("sluice.recovery")

Action = Literal["requeued", "failed", "gone"]


async def _shown(redis: Redis, job_id: str) -> bool:
    """Whether the job's stream already carries answer text (or tool calls) a client may have seen."""
    entries = await redis.xrange(events_key(job_id), count=8)  # Started, then the answer
    return any(isinstance(decode_event(fields[b"e"]), Delta | ToolCalls) for _, fields in entries)


async def recover_job(redis: Redis, job_id: str, stream_ttl: int, worker_id: str | None = None) -> Action:
    """``worker_id``: the worker that ran it, if known; the job may have been routed to it, and
    be in its queue of its own rather than the model's."""
    payload = await redis.get(job_key_prefix + job_id)
    if payload is None:  # it ended (or expired) after all
        return "gone"
    job = decode_job(deserialize_job(payload, deserializer=deserialize_arq_job).args[0])
    if job.input.stream and await _shown(redis, job_id):
        async with redis.pipeline(transaction=True) as pipe:
            await EventLog(redis, stream_ttl).append(Batch({job_id: [failed(interrupted())]}), pipe)
            pipe.zrem(queue_key(job.model), job_id)
            if worker_id is not None:  # else handed back with the worker's routed jobs, to no end
                pipe.zrem(direct_queue_key(queue_key(job.model), worker_id), job_id)
            pipe.delete(job_key_prefix + job_id, in_progress_key_prefix + job_id, retry_key_prefix + job_id)
            await pipe.execute()
        return "failed"
    # arq keeps a running job in its queue; without the in-progress mark any worker takes it again.
    async with redis.pipeline(transaction=False) as pipe:
        pipe.delete(in_progress_key_prefix + job_id)
        pipe.publish(pickup_channel(queue_key(job.model)), b"1")
        await pipe.execute()
    return "requeued"


async def direct_queues(redis: Redis, worker_id: str) -> list[str]:
    """The shared queues that have jobs routed to ``worker_id`` in a queue of its own. Found by
    name, not by the worker's advert, which expires with its heartbeat: recovery comes later, and
    may be run by a process of another model."""
    suffix = direct_queue_key("", worker_id)
    keys = [key async for key in redis.scan_iter(match=queue_key("*") + suffix, count=1000)]
    return sorted(key.decode().removesuffix(suffix) for key in keys)


async def recover_worker(redis: Redis, worker_id: str, stream_ttl: int) -> dict[str, Action]:
    """The jobs of a silent worker, once it is claimed (``{}`` if another process claimed it);
    the jobs routed to it go back to their models' shared queues."""
    if not await claim(redis, worker_id):
        return {}
    # Its routed jobs, the requeued ones among them, go back to whichever models' queues they are of.
    actions = await _clear(redis, worker_id, await direct_queues(redis, worker_id), stream_ttl)
    log.warning("worker %s went silent; its jobs: %s", worker_id, actions or "none")
    return actions


async def leave(redis: Redis, worker_id: str, queue: str, stream_ttl: int) -> dict[str, Action]:
    """A stopping worker's last step, once none of its jobs runs: those still recorded as its own
    (an end not written as Redis was away, a claim whose reply was lost) are recovered as a dead
    worker's would be, the jobs routed to it go back to ``queue``, and it leaves the registry.
    (Left marked, a routed job would stay in a queue nobody polls any more.)

    It takes itself over first, as recovery takes a silent worker: if another process found it
    silent and took it, that one recovers its jobs, and each is recovered once."""
    if not await claim(redis, worker_id):
        log.warning("worker %s was taken over by recovery before it left", worker_id)
        return {}
    actions = await _clear(redis, worker_id, [queue], stream_ttl)
    if actions:
        log.warning("worker %s stopped with jobs still recorded as running: %s", worker_id, actions)
    return actions


async def _clear(redis: Redis, worker_id: str, queues: list[str], stream_ttl: int) -> dict[str, Action]:
    """A worker taken over (:func:`claim`): the jobs it still records as running recovered, those
    routed to it on ``queues`` handed back, and its keys gone."""
    jobs = await cast(Awaitable[set[bytes]], redis.smembers(running_key(worker_id)))
    actions = {job.decode(): await recover_job(redis, job.decode(), stream_ttl, worker_id) for job in jobs}
    for queue in queues:
        await FairQueue(redis).hand_back(queue, worker_id)
    await deregister(redis, worker_id)
    return actions


async def unrecorded_claims(redis: Redis, queue: str, claim_ms: int, grace_ms: int) -> list[str]:
    """Jobs of ``queue`` claimed by arq more than ``grace_ms`` ago that no live worker records.

    ``claim_ms`` is the in-progress mark's full lifetime (job timeout + 10 s), so its age is
    ``claim_ms - ttl left``."""
    _, entries = await head(redis, queue)
    old = [e.job_id for e in entries if e.running and claim_ms - e.claim_ttl_ms > grace_ms]
    if not old:
        return []
    # Generous: a worker recorded a job if any worker does (live or not yet recovered).
    workers: list[bytes] = await redis.zrange(WORKERS_KEY, 0, -1)
    keys = [running_key(w.decode()) for w in workers]
    recorded = await cast(Awaitable[set[bytes]], redis.sunion(keys)) if keys else set()
    return [job_id for job_id in old if job_id.encode() not in recorded]


class Recovery:
    """Looks for silent workers every third of the TTL and recovers their jobs.

    Only once this process has itself reached Redis for a whole TTL: after a Redis outage (or
    restart) every worker's last beat is old, and the live ones need a TTL to beat again.
    """

    def __init__(
        self,
        redis: Redis,
        queues: Sequence[str],
        *,
        heartbeat_ttl: float,
        stream_ttl: int,
        job_timeout: float,
        observe: Callable[[Action], None] = lambda action: None,
    ) -> None:
        self._redis = redis
        self._queues = list(queues)
        self._claim_ms = int((job_timeout + 10) * 1000)  # arq's in-progress lifetime
        self._abort_ms = JOB_EXPIRES_MS + self._claim_ms  # queued for a day, then run to its end
        self._observe = observe
        self._ttl = heartbeat_ttl
        self._stream_ttl = stream_ttl
        self._steady = Steady(heartbeat_ttl)

    async def sweep(self) -> dict[str, Action]:
        actions: dict[str, Action] = {}
        try:
            # Aborts that outlived any job they could stop (one ended as it was aborted, say):
            # arq never trims them, and every worker reads the whole set at each poll for aborts.
            before = f"({time.time() * 1000 - self._abort_ms:.0f}"
            await self._redis.zremrangebyscore(abort_jobs_ss, "-inf", before)
            silent = await silent_workers(self._redis, self._ttl)
            if not self._steady.reached():
                return actions
            for worker_id in silent:
                actions |= await recover_worker(self._redis, worker_id, self._stream_ttl)
            grace_ms = int(self._ttl * 2000)
            for queue in self._queues:
                for job_id in await unrecorded_claims(self._redis, queue, self._claim_ms, grace_ms):
                    # Every process sweeps: one takes each job, or a second could release the
                    # claim of the worker that took the job up again after the first.
                    if not await self._redis.set(recovering_key(job_id), b"1", nx=True, ex=60):
                        continue
                    actions[job_id] = await recover_job(self._redis, job_id, self._stream_ttl)
                    log.warning("job %s: its worker died as it took it up: %s", job_id, actions[job_id])
            for action in actions.values():
                self._observe(action)
        except (RedisError, OSError) as exc:
            self._steady.lost()
            log.warning("recovery sweep skipped (Redis unavailable): %s", exc)
        return actions

    async def run(self) -> None:
        while True:
            await self.sweep()
            await asyncio.sleep(self._ttl / 3)
