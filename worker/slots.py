"""One worker, two arq queues, one budget of slots, polled when woken.

A worker takes jobs from its model's shared queue and from its own direct queue (jobs the gateway
routed to it: their adapter is loaded here, or their session is pinned here). arq runs one queue
per ``Worker``, so there are two; each may start a job only while both together run fewer than
the worker's slots. arq reads ``max_jobs`` before each poll and before each job it starts, right
where it counts the job in, so a ``max_jobs`` computed from both counts at that moment is exact.

Both poll when the worker's :class:`~worker.doorbell.Doorbell` rings (a job queued or aborted, a
slot freed), and otherwise only every ``poll_delay`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from arq import Worker

from worker.doorbell import Doorbell


class Slots:
    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.workers: list[Worker] = []

    @property
    def running(self) -> int:
        return sum(worker.job_counter for worker in self.workers)


class SlottedWorker(Worker):
    """An arq ``Worker`` whose ``max_jobs`` is what its :class:`Slots` leave it, and which polls
    its queue when ``bell`` rings."""

    def __init__(self, *args: Any, slots: Slots, bell: Doorbell, **kwargs: Any) -> None:
        self._slots = slots
        self._bell = bell
        self._woken = bell.waiter()
        super().__init__(*args, **kwargs)
        slots.workers.append(self)

    @property
    def max_jobs(self) -> int:
        return self._slots.slots - (self._slots.running - self.job_counter)

    @max_jobs.setter
    def max_jobs(self, value: int) -> None:
        """arq's ``__init__`` sets it; the budget is :class:`Slots`' instead."""

    async def main(self) -> None:
        """arq's loop (the pool is given, there is no start-up hook), waiting on the bell instead
        of a fixed short sleep."""
        self.ctx["redis"] = self.pool
        while True:
            self._woken.clear()  # before polling: a ring during the poll means poll again
            await self._poll_iteration()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), self.poll_delay_s)

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        self._bell.ring()  # a slot is free, for this queue or the other
