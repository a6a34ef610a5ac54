"""Appending events to jobs' streams: the one write path, for the worker's publisher and for
recovery (which ends a killed worker's half-sent streams with an error event).

Any number of streams' events go out as one script call: one command to pack and one reply to
read, where an XADD and an EXPIRE per stream cost the worker's Python more than Redis's work
(it was half of a worker's CPU when relaying thousands of tokens a second). A writer numbers its
writes, so one retried after its reply was lost is not applied twice; and the write of a complete
answer's end also settles its key's reservation (``sluice/reservations.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from sluice.contract import (
    EVENT_FIELD,
    Event,
    Failed,
    Reservation,
    coalesce,
    encode,
    event_writer_key,
    events_key,
)
from sluice.errors import SluiceError
from sluice.multiplex import Multiplexed
from sluice.reservations import SETTLE_FN, settle_args

# KEYS: the writer's mark, the streams, then three per settlement (sluice/reservations.py).
# ARGV: the event field, the streams' TTL (s), the write's number (0: not numbered), how many
# streams, how many events each gets, all the events in that order, then each settlement's three.
# Each stream lives ttl seconds past its last event. A numbered write not above the writer's mark
# was applied already (its reply was lost, and it is being retried): it is skipped, so no client
# sees an event twice. The mark, the events and the settlements are one script's effects: a
# Redis that dies keeps all or none of them.
_APPEND = (
    SETTLE_FN
    + """
local write, n = tonumber(ARGV[3]), tonumber(ARGV[4])
if write > 0 then
  if tonumber(redis.call('GET', KEYS[1]) or '0') >= write then return 0 end
  redis.call('SET', KEYS[1], write, 'EX', ARGV[2])
end
local at = 5 + n
for k = 1, n do
  for _ = 1, tonumber(ARGV[4 + k]) do
    redis.call('XADD', KEYS[1 + k], '*', ARGV[1], ARGV[at])
    at = at + 1
  end
  redis.call('EXPIRE', KEYS[1 + k], ARGV[2])
end
for k = 2 + n, #KEYS, 3 do
  settle(KEYS[k], KEYS[k + 1], KEYS[k + 2], ARGV[at], ARGV[at + 1], ARGV[at + 2])
  at = at + 3
end
return 1
"""
)

#: A request's reservation, and the tokens it used: settled by the write of its last event.
Settlement = tuple[Reservation, int]


def failed(error: SluiceError) -> Failed:
    return Failed(code=int(error.code), status=error.status, message=error.message, retryable=error.retryable)


class EventLog:
    """Writes jobs' events to their streams (consecutive deltas merged into one event).

    A ``writer`` (one per process that writes) numbers its writes: see :meth:`append`."""

    def __init__(self, redis: Redis | Multiplexed, ttl_seconds: int, writer: str | None = None) -> None:
        self._append = redis.register_script(_APPEND)
        self._ttl = ttl_seconds
        self._mark = event_writer_key(writer or "unnumbered")

    async def append(
        self,
        events: Mapping[str, Sequence[Event]],
        pipe: Pipeline | None = None,
        *,
        write: int = 0,
        settle: Mapping[str, Settlement] | None = None,
    ) -> None:
        """Append each job's events (by job id) to its stream; with ``pipe``, queued on it.

        ``write``: this writer's number for the write, rising, and the same when it is retried.
        A retry of a write Redis had applied (the connection failed before its reply) is then not
        applied twice. 0: not numbered (a write that is never retried).
        ``settle``: by job id, reservations to settle in the same write (their jobs' last events
        are in it)."""
        keys: list[str] = [self._mark]
        counts: list[int] = []
        payloads: list[bytes] = []
        for job_id, batch in events.items():
            merged = [encode(event) for event in coalesce(batch)]
            keys.append(events_key(job_id))
            counts.append(len(merged))
            payloads.extend(merged)
        args: list[bytes | str | int] = [EVENT_FIELD, self._ttl, write, len(counts), *counts, *payloads]
        for job_id, (reservation, used) in (settle or {}).items():
            more_keys, more_args = settle_args(job_id, reservation, used)
            keys += more_keys
            args += more_args
        if pipe is None:
            await self._append(keys=keys, args=args)
        else:
            await pipe.register_script(_APPEND)(keys=keys, args=args)
