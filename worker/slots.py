"""One worker, two arq queues, one budget of slots.

A worker takes jobs from its model's shared queue and from its own direct queue (jobs the gateway
routed to it: their adapter is loaded here, or their session is pinned here). arq runs one queue
per ``Worker``, so there are two; each may start a job only while both together run fewer than
the worker's slots. arq reads ``max_jobs`` before each poll and before each job it starts, right
where it counts the job in, so a ``max_jobs`` computed from both counts at that moment is exact.
"""

from __future__ import annotations

from typing import Any

from arq import Worker


class Slots:
    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.workers: list[Worker] = []

    @property
    def running(self) -> int:
        return sum(worker.job_counter for worker in self.workers)


class SlottedWorker(Worker):
    """An arq ``Worker`` whose ``max_jobs`` is what its :class:`Slots` leave it."""

    def __init__(self, *args: Any, slots: Slots, **kwargs: Any) -> None:
        self._slots = slots
        super().__init__(*args, **kwargs)
        slots.workers.append(self)

    @property
    def max_jobs(self) -> int:
        return self._slots.slots - (self._slots.running - self.job_counter)

    @max_jobs.setter
    def max_jobs(self, value: int) -> None:
        """arq's ``__init__`` sets it; the budget is :class:`Slots`' instead."""
