"""What wakes a worker's queue polls: Redis pub/sub, instead of polling every millisecond.

arq polls its queue on a timer; polling fast enough for the TTFT budget (a few milliseconds)
costs every idle worker and Redis thousands of round trips a second. Instead whoever queues a job
publishes on the queue's pickup channel (inside the enqueue script, ``sluice/fairqueue.py``), the
gateway publishes each abort, and a worker rings its own bell when a slot frees; each ring makes
every arq ``Worker`` of the process poll once, now. The timer stays as a slow fallback for the
jobs nobody announces (arq's own retries) and for rings lost while the subscription reconnects.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("sluice.worker.doorbell")


class Doorbell:
    def __init__(self) -> None:
        self._waiters: list[asyncio.Event] = []

    def waiter(self) -> asyncio.Event:
        """An event set by every ring until its owner clears it (one per polling loop)."""
        event = asyncio.Event()
        self._waiters.append(event)
        return event

    def ring(self) -> None:
        for event in self._waiters:
            event.set()

    async def listen(self, redis: Redis, channels: Sequence[str]) -> None:
        """Ring on every message of ``channels``, resubscribing (and ringing, for what was missed)
        whenever the subscription breaks."""
        while True:
            pubsub = redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(*channels)
                self.ring()
                while True:
                    # get_message with no timeout waits for the next one without spinning.
                    if await pubsub.get_message(timeout=None) is not None:
                        self.ring()
            except (RedisError, OSError) as exc:
                log.warning("pickup channel lost, resubscribing in 1s: %s", exc)
                await asyncio.sleep(1.0)
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call]
