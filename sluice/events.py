"""Appending events to jobs' streams: the one write path, for the worker's publisher and for
recovery (which ends a killed worker's half-sent streams with an error event).

Any number of streams' events go out as one script call: one command to pack and one reply to
read, where an XADD and an EXPIRE per stream cost the worker's Python more than Redis's work
(it was half of a worker's CPU when relaying thousands of tokens a second). A writer numbers its
writes, so one retried after its reply was lost is not applied twice; and the write of a complete
answer's end also settles its key's reservation (``sluice/reservations.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

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
from sluice.fairqueue import FINISH_FN, JobEnd
from sluice.multiplex import Multiplexed
from sluice.reservations import SETTLE_FN, settle_args

# KEYS: the writer's mark, the streams, the inboxes of those that have one (in the streams'
# order), three per settlement (sluice/reservations.py), then six per job end (sluice/fairqueue.py).
# ARGV: the event field, the streams' TTL (s), the write's number (0: not numbered), how many
# streams, the inbox's stream and last-id fields and its length, how many settlements, how many
# events each stream gets, whether each has an inbox ('1' or ''), all the events in that order,
# then each settlement's three arguments and each job end's three.
# Each stream lives ttl seconds past its last event. A numbered write not above the writer's mark
# was applied already (its reply was lost, and it is being retried): it is skipped, so no client
# sees an event twice. A stream's first write (the stream did not exist) is also copied to its
# inbox, whole, with the stream's name and the write's last id. The mark, the events, the copies,
# the settlements and the ends are one script's effects: a Redis that dies keeps all or none.
_APPEND = (
    SETTLE_FN
    + FINISH_FN
    + """
local write, n, settles = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[8])
if write > 0 then
  if tonumber(redis.call('GET', KEYS[1]) or '0') >= write then return 0 end
  redis.call('SET', KEYS[1], write, 'EX', ARGV[2])
end
local at, box = 9 + 2 * n, 2 + n
for k = 1, n do
  local stream, count, copied = KEYS[1 + k], tonumber(ARGV[8 + k]), nil
  if ARGV[8 + n + k] == '1' then
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
local k = box
for _ = 1, settles do
  settle(KEYS[k], KEYS[k + 1], KEYS[k + 2], ARGV[at], ARGV[at + 1], ARGV[at + 2])
  k, at = k + 3, at + 3
end
while k <= #KEYS do
  finish(KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4], KEYS[k + 5],
    ARGV[at], ARGV[at + 1], ARGV[at + 2])
  k, at = k + 6, at + 3
end
return 1
"""
)

#: A request's reservation, and the tokens it used: settled by the write of its last event.
Settlement = tuple[Reservation, int]


def failed(error: SluiceError) -> Failed:
    return Failed(code=int(error.code), status=error.status, message=error.message, retryable=error.retryable)


@dataclass
class Batch:
    """What one write carries, by job id: each job's events, and what goes with them."""

    events: dict[str, list[Event]] = field(default_factory=dict)
    #: Reservations settled with their jobs' last events.
    settle: dict[str, Settlement] = field(default_factory=dict)
    #: The inbox of each job's gateway (``sluice.contract.inbox_key``), where its stream's first
    #: write is copied.
    inboxes: dict[str, str] = field(default_factory=dict)
    #: Jobs' ends (``sluice.fairqueue.Claims.end_of``), written with their last events.
    ends: dict[str, JobEnd] = field(default_factory=dict)

    def add(
        self,
        job_id: str,
        events: Sequence[Event],
        *,
        settle: Settlement | None = None,
        inbox: str | None = None,
        end: JobEnd | None = None,
    ) -> None:
        self.events.setdefault(job_id, []).extend(events)
        if settle is not None:
            self.settle[job_id] = settle
        if inbox is not None:
            self.inboxes[job_id] = inbox
        if end is not None:
            self.ends[job_id] = end


class EventLog:
    """Writes jobs' events to their streams (consecutive deltas merged into one event).

    A ``writer`` (one per process that writes) numbers its writes: see :meth:`append`."""

    def __init__(self, redis: Redis | Multiplexed, ttl_seconds: int, writer: str | None = None) -> None:
        self._append = redis.register_script(_APPEND)
        self._ttl = ttl_seconds
        self._mark = event_writer_key(writer or "unnumbered")

    async def append(self, batch: Batch, pipe: Pipeline | None = None, *, write: int = 0) -> None:
        """Write ``batch``: each job's events appended to its stream, with what goes with them,
        in one script; with ``pipe``, queued on it.

        ``write``: this writer's number for the write, rising, and the same when it is retried.
        A retry of a write Redis had applied (the connection failed before its reply) is then not
        applied twice. 0: not numbered (a write that is never retried)."""
        keys: list[str] = [self._mark]
        boxes: list[str] = []
        counts: list[int] = []
        flags: list[str] = []
        payloads: list[bytes] = []
        for job_id, events in batch.events.items():
            merged = [encode(event) for event in coalesce(events)]
            keys.append(events_key(job_id))
            counts.append(len(merged))
            payloads.extend(merged)
            inbox = batch.inboxes.get(job_id)
            flags.append("1" if inbox else "")
            if inbox:
                boxes.append(inbox)
        keys += boxes
        args: list[bytes | str | int] = [EVENT_FIELD, self._ttl, write, len(counts)]
        args += [
            INBOX_STREAM_FIELD,
            INBOX_LAST_FIELD,
            INBOX_MAXLEN,
            len(batch.settle),
            *counts,
            *flags,
            *payloads,
        ]
        for job_id, (reservation, used) in batch.settle.items():
            more_keys, more_args = settle_args(job_id, reservation, used)
            keys += more_keys
            args += more_args
        for end in batch.ends.values():
            keys += end.keys
            args += end.args
        if pipe is None:
            await self._append(keys=keys, args=args)
        else:
            await pipe.register_script(_APPEND)(keys=keys, args=args)
