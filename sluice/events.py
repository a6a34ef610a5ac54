"""Appending events to jobs' streams: the one write path, for the worker's publisher and for
recovery (which ends a killed worker's half-sent streams with an error event).

Any number of streams' events go out as one script call: one command to pack and one reply to
read, where an XADD and an EXPIRE per stream cost the worker's Python more than Redis's work
(it was half of a worker's CPU when relaying thousands of tokens a second).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from sluice.contract import EVENT_FIELD, Event, Failed, coalesce, encode, events_key
from sluice.errors import SluiceError

# KEYS: the streams.  ARGV: the event field, the streams' TTL (s), how many events each stream
# gets, then all the events in that order. Each stream lives ttl seconds past its last event.
_APPEND = """
local at = 3 + #KEYS
for k = 1, #KEYS do
  for _ = 1, tonumber(ARGV[2 + k]) do
    redis.call('XADD', KEYS[k], '*', ARGV[1], ARGV[at])
    at = at + 1
  end
  redis.call('EXPIRE', KEYS[k], ARGV[2])
end
"""


def failed(error: SluiceError) -> Failed:
    return Failed(code=int(error.code), status=error.status, message=error.message, retryable=error.retryable)


class EventLog:
    """Writes jobs' events to their streams (consecutive deltas merged into one event)."""

    def __init__(self, redis: Redis, ttl_seconds: int) -> None:
        self._append = redis.register_script(_APPEND)
        self._ttl = ttl_seconds

    async def append(self, events: Mapping[str, Sequence[Event]], pipe: Pipeline | None = None) -> None:
        """Append each job's events (by job id) to its stream; with ``pipe``, queued on it."""
        keys: list[str] = []
        counts: list[int] = []
        payloads: list[bytes] = []
        for job_id, batch in events.items():
            merged = [encode(event) for event in coalesce(batch)]
            keys.append(events_key(job_id))
            counts.append(len(merged))
            payloads.extend(merged)
        args: list[bytes | int] = [EVENT_FIELD, self._ttl, *counts, *payloads]
        await self._append(keys=keys, args=args, client=pipe)
