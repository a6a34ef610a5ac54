"""Where tokens leave the worker: a job's events appended to its Redis Stream.

Whatever the engine produced since the last write goes out in one pipeline (consecutive deltas
merged into one event), so Redis and the gateway see a bounded event rate however fast tokens come;
and the writes of all of a worker's jobs share that pipeline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from redis.asyncio import Redis

from sluice.contract import Event
from sluice.events import append


class EventPublisher:
    """Appends jobs' events to their streams; one per worker, shared by all its jobs.

    The writes that jobs make in the same turn of the event loop go out in one pipeline, so a
    worker running hundreds of streams makes one round trip per turn rather than one per job;
    a write never waits for an earlier one to finish (each takes its own pooled connection).
    A job awaits its own publish, so its events stay in order.
    """

    def __init__(self, redis: Redis, ttl_seconds: int) -> None:
        self._redis = redis
        self._ttl = ttl_seconds
        self._pending: dict[str, list[Event]] = {}
        self._waiters: list[asyncio.Future[None]] = []
        self._flushes: set[asyncio.Task[None]] = set()
        self._scheduled = False

    async def publish(self, job_id: str, events: Sequence[Event]) -> None:
        if not events:  # text held back (a possible tool call): nothing to say yet
            return
        self._pending.setdefault(job_id, []).extend(events)
        done = asyncio.get_running_loop().create_future()
        self._waiters.append(done)
        if not self._scheduled:
            self._scheduled = True
            # Its own task: a job cancelled while waiting must not cancel the others' writes.
            flush = asyncio.create_task(self._flush())
            self._flushes.add(flush)
            flush.add_done_callback(self._flushes.discard)
        await done

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # one turn: the jobs woken alongside this one join the pipeline
        pending, waiters = self._pending, self._waiters
        self._pending, self._waiters, self._scheduled = {}, [], False
        try:
            await self._write(pending)
        except Exception as exc:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(exc)
        else:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def _write(self, pending: dict[str, list[Event]]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id, events in pending.items():
                append(pipe, job_id, events, self._ttl)
            await pipe.execute()
