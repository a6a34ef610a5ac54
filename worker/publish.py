"""Where tokens leave the worker: a job's events appended to its Redis Stream.

Whatever the engine produced since the last write goes out in one pipeline (consecutive deltas
merged into one event), so Redis and the gateway see a bounded event rate however fast tokens come.
"""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis

from sluice.contract import EVENT_FIELD, Delta, Event, encode, events_key


def coalesce(events: Sequence[Event]) -> list[Event]:
    merged: list[Event] = []
    for event in events:
        last = merged[-1] if merged else None
        if isinstance(event, Delta) and isinstance(last, Delta):
            merged[-1] = Delta(text=last.text + event.text, tokens=last.tokens + event.tokens)
        else:
            merged.append(event)
    return merged


class EventPublisher:
    def __init__(self, redis: Redis, job_id: str, ttl_seconds: int) -> None:
        self._redis = redis
        self._key = events_key(job_id)
        self._ttl = ttl_seconds

    async def publish(self, events: Sequence[Event]) -> None:
        if not events:  # text held back (a possible tool call): nothing to say yet
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for event in coalesce(events):
                pipe.xadd(self._key, {EVENT_FIELD: encode(event)})
            # Refreshed on every write: a stream lives ttl seconds past its last event.
            pipe.expire(self._key, self._ttl)
            await pipe.execute()
