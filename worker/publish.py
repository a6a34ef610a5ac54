"""Where tokens leave the worker: a job's events appended to its Redis Stream.

Whatever the engine produced since the last write goes out in one write (consecutive deltas
merged into one event), so Redis and the gateway see a bounded event rate however fast tokens come;
and the writes of all of a worker's jobs share that write (one script call, ``sluice/events.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from sluice.contract import Event
from sluice.events import EventLog

log = logging.getLogger("sluice.worker.publish")


#: redis-py's retry helper: about 6 s of exponential backoff on connection errors, then give up
#: (by then the gateway has ended the streams it relays with a 503 error).
RIDE_OUT = Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=10)


async def _not_yet(error: Exception) -> None:
    log.warning("events not written yet (Redis unavailable), retrying: %s", error)


class EventPublisher:
    """Appends jobs' events to their streams; one per worker, shared by all its jobs.

    One write is in flight at a time: what jobs publish meanwhile goes out together in the next
    one, so writes batch exactly as much as the load needs. A lone stream's tokens each leave
    at once; many streams' tokens share a script call in the worker, a script run in Redis and
    a read in the gateway, instead of each costing all three. A job awaits its own publish, so
    its events stay in order.
    """

    def __init__(self, redis: Redis, ttl_seconds: int, retry: Retry | None = None) -> None:
        self._log = EventLog(redis, ttl_seconds)
        self._retry = retry or RIDE_OUT
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
        """Write until nothing is pending; what arrives during a write goes in the next."""
        await asyncio.sleep(0)  # one turn: the jobs woken alongside this one join the write
        try:
            while self._pending:
                await self._write_pending()
        finally:
            self._scheduled = False

    async def _write_pending(self) -> None:
        pending, waiters = self._pending, self._waiters
        self._pending, self._waiters = {}, []
        try:
            # Retried (same entries, in order): a Redis restarting with its append-only file comes
            # back within seconds, and the streams in flight carry on where they were.
            await self._retry.call_with_retry(lambda: self._write(pending), _not_yet)
        except Exception as exc:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(exc)
        else:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def _write(self, pending: dict[str, list[Event]]) -> None:
        await self._log.append(pending)
