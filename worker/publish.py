"""Where tokens leave the worker: a job's events appended to its Redis Stream.

Whatever the engine produced since the last write goes out in one write (consecutive deltas
merged into one event), so Redis and the gateway see a bounded event rate however fast tokens come;
and the writes of all of a worker's jobs share that write (one script call, ``sluice/events.py``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from collections.abc import Sequence

from redis.asyncio import Redis

from sluice.contract import Event, Started
from sluice.events import NOTHING, Along, Batch, EventLog
from sluice.multiplex import Multiplexed
from sluice.retry import ride_out

log = logging.getLogger("sluice.worker.publish")


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class EventPublisher:
    """Appends jobs' events to their streams; one per worker, shared by all its jobs.

    One write is in flight at a time, and writes start at most every ``interval`` seconds: what
    jobs publish meanwhile goes out together in the next one. Every write costs a script call
    here, a script run in Redis, a read in the gateway and a frame to each client; batched, many
    tokens share those, where one token each would pay them all (most of the CPU per token of
    all three processes). A job's first events (they start with :class:`Started`) never wait
    for the interval, so time to first token is not held back; later tokens wait at most
    ``interval``. A job awaits its own publish, so its events stay in order.
    """

    def __init__(self, redis: Redis | Multiplexed, ttl_seconds: int, *, interval: float = 0.0) -> None:
        self._log = EventLog(redis, ttl_seconds, writer=uuid.uuid4().hex)
        self._writes = itertools.count(1)
        self._interval = interval
        self._last_write = -interval
        self._hurry: asyncio.Future[None] | None = None  # set: stop waiting for the interval
        self._urgent = False  # a job's first events are pending
        self._pending = Batch()
        self._waiters: list[asyncio.Future[None]] = []
        self._flushes: set[asyncio.Task[None]] = set()
        self._scheduled = False

    async def publish(self, job_id: str, events: Sequence[Event], along: Along = NOTHING) -> None:
        """Append ``events`` to the job's stream, with what goes ``along`` in the same write: its
        reservation settled with its last events (once its gateway reads them, the key's slot
        is free), its stream's first write copied to its gateway's inbox, its end in arq's keys
        with its last events, written only while it is in its owner's running set
        (``sluice/events.py``)."""
        if not events:  # text held back (a possible tool call): nothing to say yet
            return
        self._pending.add(job_id, events, along)
        done = asyncio.get_running_loop().create_future()
        self._waiters.append(done)
        if isinstance(events[0], Started):  # a job's first events: its time to first token
            self._urgent = True
            if self._hurry is not None:
                _resolve(self._hurry)
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
            while self._pending.events:
                await self._until_due()
                self._last_write = asyncio.get_running_loop().time()
                await self._write_pending()
        finally:
            self._scheduled = False

    async def _until_due(self) -> None:
        """Wait out the interval since the last write, unless a job's first events are pending."""
        loop = asyncio.get_running_loop()
        wait = self._last_write + self._interval - loop.time()
        if wait <= 0 or self._urgent:
            return
        hurry = self._hurry = loop.create_future()
        timer = loop.call_later(wait, _resolve, hurry)
        try:
            await hurry
        finally:
            timer.cancel()
            self._hurry = None

    async def _write_pending(self) -> None:
        pending, waiters = self._pending, self._waiters
        self._pending, self._waiters, self._urgent = Batch(), [], False
        write = next(self._writes)
        try:
            # Retried (same entries, in order, under the same number: one Redis had applied before
            # the connection failed is not applied again): a Redis restarting with its append-only
            # file comes back within seconds, and the streams in flight carry on where they were.
            await ride_out(lambda: self._log.append(pending, write=write), "events", log)
        except Exception as exc:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(exc)
        else:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
