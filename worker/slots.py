"""One worker, two arq queues, one budget of slots.

A worker takes jobs from its model's shared queue and from its own direct queue (jobs the gateway
routed to it: their adapter is loaded here, or their session is pinned here). arq runs one queue
per ``Worker``, so there are two; each may start jobs only while both together run fewer than the
worker's slots. arq re-reads ``max_jobs`` before every poll, so moving it is enough.
"""

from __future__ import annotations

from typing import Any

from arq import Worker


class SharedSlots:
    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._workers: list[Worker] = []

    def add(self, worker: Worker) -> None:
        self._workers.append(worker)
        self.rebalance({})

    def rebalance(self, ending: dict[int, int] | None = None) -> None:
        """Each queue's ``max_jobs``: the slots, less what the other queues run now. ``ending``
        discounts a job that is ending but still counted (arq counts it down after its hook). Also
        called with each heartbeat: a job arq ends without hooks (expired, out of tries) is then
        counted out too."""
        ending = ending or {}
        running = {id(w): w.job_counter - ending.get(id(w), 0) for w in self._workers}
        total = sum(running.values())
        for worker in self._workers:
            worker.max_jobs = max(running[id(worker)], self.slots - (total - running[id(worker)]))

    def hooks(self, worker_index: int) -> dict[str, Any]:
        """``on_job_start`` / ``on_job_end`` for the ``worker_index``-th queue's arq ``Worker``."""

        async def started(ctx: dict[str, Any]) -> None:
            self.rebalance({})

        async def ended(ctx: dict[str, Any]) -> None:
            self.rebalance({id(self._workers[worker_index]): 1})

        return {"on_job_start": started, "on_job_end": ended}

    @property
    def running(self) -> int:
        return sum(w.job_counter for w in self._workers)
