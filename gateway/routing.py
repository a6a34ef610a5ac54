"""Where a job goes: its model's shared queue, which any of the model's workers takes from, or one
worker's own queue, when the job is better off there.

- A LoRA request goes to a worker that holds its adapter loaded and has a free slot; else to
  the worker with the most room, which loads it (so a hot adapter spreads once its holders are
  full). Workers advertise their adapters with each heartbeat; until one of them lists it, this
  gateway remembers where it sent each adapter, so the requests for a new adapter that arrive
  before its first job has run and been advertised land on the same worker.
- Requests with the same ``x-session-affinity`` go to the same worker while it lives, so its
  prefix cache serves the conversation's growing prompt.
- Everything else, and everything while no worker is alive, goes to the shared queue.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from redis.asyncio import Redis

from sluice.contract import AdapterRef, WorkerInfo, affinity_key, queue_key
from sluice.registry import live_adverts

#: The request header that pins a conversation to one worker (a Workers AI convention).
SESSION_HEADER = "x-session-affinity"
#: Seconds a session stays pinned to its worker after its last request.
AFFINITY_SECONDS = 600
#: Seconds the workers' adverts are reused for: they change at heartbeat pace.
_ADVERTS_SECONDS = 0.5
#: Seconds an adapter sent to a worker counts as held there while no advert lists it: past a
#: job's wait in its queue and the adapter's load, so one that never loaded stops attracting.
SENT_SECONDS = 60.0


class JobRouter:
    def __init__(
        self, redis: Redis, heartbeat_ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._redis = redis
        self._ttl = heartbeat_ttl
        self._clock = clock
        self._adverts: dict[str, tuple[float, list[WorkerInfo]]] = {}
        self._sent: dict[str, tuple[str, float]] = {}  # adapter id -> (worker id, when)
        self._assigned: dict[str, int] = {}  # worker id -> jobs routed since its advert was read

    async def route(self, model: str, adapter: AdapterRef | None, session: str | None) -> str | None:
        """The worker to send a job to, or ``None`` for the shared queue."""
        if adapter is None and session is None:
            return None
        workers = await self._live(queue_key(model))
        if not workers:
            return None
        if session is None:
            return self._for_adapter(workers, adapter)
        key = affinity_key(hashlib.sha256(session.encode()).hexdigest()[:32])
        pinned = await self._redis.get(key)
        chosen = pinned.decode() if pinned is not None else None
        if chosen not in {worker.id for worker in workers}:
            chosen = self._for_adapter(workers, adapter)
        else:
            self._assigned[chosen] = self._assigned.get(chosen, 0) + 1
        await self._redis.set(key, chosen, ex=AFFINITY_SECONDS)
        return chosen

    def _free(self, worker: WorkerInfo) -> int:
        """Its free slots as advertised, less what this gateway routed there since."""
        return worker.slots - worker.running - self._assigned.get(worker.id, 0)

    def _for_adapter(self, workers: list[WorkerInfo], adapter: AdapterRef | None) -> str:
        now = self._clock()
        _free = self._free
        holders = {w.id for w in workers if adapter is not None and adapter.id in w.adapters}
        if adapter is not None and (sent := self._sent.get(adapter.id)):
            # Sent there and not advertised yet: its job waits, or loads it, or ran before the
            # worker's next beat. A job takes longer than a beat, so time alone cannot tell.
            # (Past SENT_SECONDS it never will be: dropped as the adverts are read, _forget_sent.)
            if sent[0] in holders:
                del self._sent[adapter.id]  # advertised: its adverts tell from now on
            else:
                holders.add(sent[0])
        with_room = [w for w in workers if w.id in holders and _free(w) > 0]
        if with_room:
            chosen = max(with_room, key=_free)
        else:  # the most room; ties: a holder, then the fewest adapters to make room among
            chosen = max(workers, key=lambda w: (_free(w), w.id in holders, -len(w.adapters)))
        if adapter is not None and chosen.id not in holders:
            self._sent[adapter.id] = (chosen.id, now)
        self._assigned[chosen.id] = self._assigned.get(chosen.id, 0) + 1
        return chosen.id

    async def _live(self, queue: str) -> list[WorkerInfo]:
        now = self._clock()
        cached = self._adverts.get(queue)
        if cached is None or now - cached[0] > _ADVERTS_SECONDS:
            cached = (now, await live_adverts(self._redis, self._ttl, queue))
            self._adverts[queue] = cached
            for worker in cached[1]:  # their adverts count what was routed to them until now
                self._assigned.pop(worker.id, None)
            self._forget_sent(now)
        return cached[1]

    def _forget_sent(self, now: float) -> None:
        """Drop what no longer steers a route, for adapters never asked for again."""
        for adapter_id, (_, when) in list(self._sent.items()):
            if now - when >= SENT_SECONDS:
                del self._sent[adapter_id]
