"""What wakes a worker's queue polls: Redis pub/sub, instead of polling every millisecond.

arq polls its queue on a timer; polling fast enough for the TTFT budget (a few milliseconds)
costs every idle worker and Redis thousands of round trips a second. Instead whoever queues a job
publishes on the queue's pickup channel (inside the enqueue script, ``sluice/fairqueue.py``), as
does a worker that hands a job back, the gateway publishes each abort, and a worker rings its own
bell when a slot frees. Each arq
``Worker`` of the process has a :class:`Wake` that says what to look at when it polls: its queue
when a job was announced there (or may still wait there for a slot), the aborted jobs when one
was announced. The timer stays as a slow fallback that looks at everything, for the jobs nobody
announces (arq's own retries) and for rings lost while the subscription reconnects.
"""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("sluice.worker.doorbell")


class Wake:
    """One polling loop's reasons to poll; each is cleared by the loop as it acts on it."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        #: Jobs may be waiting in this loop's queue (announced, or left there for want of a slot).
        self.jobs = True
        #: A job was aborted since this loop last looked.
        self.aborts = True

    def everything(self) -> None:
        self.jobs = self.aborts = True


class Doorbell:
    def __init__(self, aborts_channel: str) -> None:
        self._aborts = aborts_channel
        self._queues: dict[str, Wake] = {}

    def wake_for(self, channel: str) -> Wake:
        """The :class:`Wake` of the loop polling the queue announced on ``channel``."""
        wake = self._queues[channel] = Wake()
        return wake

    def slot_freed(self) -> None:
        for wake in self._queues.values():
            if wake.jobs:
                wake.event.set()

    def _heard(self, channel: str) -> None:
        if channel == self._aborts:
            for wake in self._queues.values():
                wake.aborts = True
                wake.event.set()
        elif (queue := self._queues.get(channel)) is not None:
            queue.jobs = True
            queue.event.set()

    async def listen(self, redis: Redis) -> None:
        """Wake the loops as their channels say, resubscribing (and waking every loop for
        everything, for what was missed) whenever the subscription breaks."""
        while True:
            pubsub = redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._aborts, *self._queues)
                for wake in self._queues.values():
                    wake.everything()
                    wake.event.set()
                while True:
                    # get_message with no timeout waits for the next one without spinning.
                    message = await pubsub.get_message(timeout=None)
                    if message is not None:
                        self._heard(message["channel"].decode())
            except (RedisError, OSError) as exc:
                log.warning("pickup channels lost, resubscribing in 1s: %s", exc)
                await asyncio.sleep(1.0)
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call]
