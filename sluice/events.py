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
    INBOX_LAST_FIELD,
    INBOX_MAXLEN,
    INBOX_STREAM_FIELD,
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

# KEYS: the writer's mark, the streams, the inboxes of those that have one (in the streams'
# order), then three per settlement (sluice/reservations.py).
# ARGV: the event field, the streams' TTL (s), the write's number (0: not numbered), how many
# streams, the inbox's stream and last-id fields and its length, how many events each stream gets,
# whether each has an inbox ('1' or ''), all the events in that order, then each settlement's three.
# Each stream lives ttl seconds past its last event. A numbered write not above the writer's mark
# was applied already (its reply was lost, and it is being retried): it is skipped, so no client
# sees an event twice. A stream's first write (the stream did not exist) is also copied to its
# inbox, whole, with the stream's name and the write's last id. The mark, the events, the copies
# and the settlements are one script's effects: a Redis that dies keeps all or none of them.
_APPEND = (
    SETTLE_FN
    + """
local write, n = tonumber(ARGV[3]), tonumber(ARGV[4])
if write > 0 then
  if tonumber(redis.call('GET', KEYS[1]) or '0') >= write then return 0 end
  redis.call('SET', KEYS[1], write, 'EX', ARGV[2])
end
local at, box = 8 + 2 * n, 2 + n
for k = 1, n do
  local stream, count, copied = KEYS[1 + k], tonumber(ARGV[7 + k]), nil
  if ARGV[7 + n + k] == '1' then
    if redis.call('EXISTS', stream) == 0 then copied = {ARGV[5], stream, ARGV[6], false} end
    box = box + 1
  end
  local last
  for i = at, at + count - 1 do
    last = redis.call('XADD', stream, '*', ARGV[1], ARGV[i])
    if copied then copied[#copied + 1], copied[#copied + 2] = ARGV[1], ARGV[i] end
  end
  at = at + count
  redis.call('EXPIRE', stream, ARGV[2])
  if copied and last then
    copied[4] = last
    redis.call('XADD', KEYS[box - 1], 'MAXLEN', '~', ARGV[7], '*', unpack(copied))
    redis.call('EXPIRE', KEYS[box - 1], ARGV[2])
  end
end
for k = box, #KEYS, 3 do
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
        inboxes: Mapping[str, str] | None = None,
    ) -> None:
        """Append each job's events (by job id) to its stream; with ``pipe``, queued on it.

        ``write``: this writer's number for the write, rising, and the same when it is retried.
        A retry of a write Redis had applied (the connection failed before its reply) is then not
        applied twice. 0: not numbered (a write that is never retried).
        ``settle``: by job id, reservations to settle in the same write (their jobs' last events
        are in it).
        ``inboxes``: by job id, the inbox of its gateway (``sluice.contract.inbox_key``), where
        its stream's first write is copied."""
        inboxes = inboxes or {}
        keys: list[str] = [self._mark]
        boxes: list[str] = []
        counts: list[int] = []
        flags: list[str] = []
        payloads: list[bytes] = []
        for job_id, batch in events.items():
            merged = [encode(event) for event in coalesce(batch)]
            keys.append(events_key(job_id))
            counts.append(len(merged))
            payloads.extend(merged)
            inbox = inboxes.get(job_id)
            flags.append("1" if inbox else "")
            if inbox:
                boxes.append(inbox)
        keys += boxes
        args: list[bytes | str | int] = [EVENT_FIELD, self._ttl, write, len(counts)]
        args += [INBOX_STREAM_FIELD, INBOX_LAST_FIELD, INBOX_MAXLEN, *counts, *flags, *payloads]
        for job_id, (reservation, used) in (settle or {}).items():
            more_keys, more_args = settle_args(job_id, reservation, used)
            keys += more_keys
            args += more_args
        if pipe is None:
            await self._append(keys=keys, args=args)
        else:
            await pipe.register_script(_APPEND)(keys=keys, args=args)
