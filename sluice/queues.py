"""arq's queue as Sluice reads it: the jobs at its head, running or waiting.

arq keeps a running job in its queue (a sorted set by enqueue time) until the job ends, marked by
an ``arq:in-progress:<id>`` key whose TTL is the job timeout + 10 s. So the head of a queue holds
the running jobs and the oldest waiting ones; reading it, with each entry's mark, tells both
apart (the gateway's backlog and backpressure) and how long ago a job was claimed (recovery).
"""

from __future__ import annotations

from dataclasses import dataclass

from arq.constants import in_progress_key_prefix
from redis.asyncio import Redis

#: How many of a queue's oldest entries are read at a time, and at most (past them, every entry
#: counts as waiting): enough for thousands of running jobs ahead of the first waiting one.
PAGE = 512
MAX_PAGES = 8


@dataclass(frozen=True)
class Entry:
    job_id: str
    #: When it was enqueued (ms since the epoch; in the future for a deferred job).
    score: float
    #: The milliseconds left on its in-progress mark; 0 or less: not running.
    claim_ttl_ms: int

    @property
    def running(self) -> bool:
        return self.claim_ttl_ms > 0


async def head(redis: Redis, queue: str) -> tuple[int, list[Entry]]:
    """The queue's length and its oldest entries: pages of :data:`PAGE` until one holds a waiting
    job (or :data:`MAX_PAGES` were read)."""
    total = 0
    read: list[Entry] = []
    for page in range(MAX_PAGES):
        async with redis.pipeline(transaction=False) as pipe:
            pipe.zcard(queue)
            pipe.zrange(queue, page * PAGE, (page + 1) * PAGE - 1, withscores=True)
            total, entries = await pipe.execute()
        if not entries:
            break
        ids = [job_id.decode() for job_id, _ in entries]
        async with redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.pttl(in_progress_key_prefix + job_id)
            ttls = await pipe.execute()
        read += [Entry(i, score, int(ttl)) for i, (_, score), ttl in zip(ids, entries, ttls, strict=True)]
        if len(entries) < PAGE or not all(entry.running for entry in read[-len(entries) :]):
            break
    return int(total), read
