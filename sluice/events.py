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

# KEYS: the writer's mark; per stream, the stream, its inbox if it has one and its owner's running
# set if it has one; three per settlement (sluice/reservations.py); six per job end
# (sluice/fairqueue.py).
# ARGV: the event field, the streams' TTL (s), the write's number (0: not numbered), how many
# streams, the inbox's stream and last-id fields and its length, how many settlements; per
# stream, how many events, '1' if it has an inbox (else ''), its job id if it has an owner (else
# ''), then its events; then each settlement's three arguments and each job end's three.
# Each stream lives ttl seconds past its last event. A numbered write not above the writer's mark
# was applied already (its reply was lost, and it is being retried): it is skipped, so no client
# sees an event twice. A stream's first write (the stream did not exist) is also copied to its
# inbox, whole, with the stream's name and the write's last id. A stream with an owner is written
# only while its job is in that running set: a worker that stalled while recovery gave its job to
# another must not add its run's events to the new run's. The mark, the events, the copies, the
# settlements and the ends are one script's effects: a Redis that dies keeps all or none.
_APPEND = (
    SETTLE_FN
    + FINISH_FN
    + """
local write, n, settles = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[8])
if write > 0 then
  if tonumber(redis.call('GET', KEYS[1]) or '0') >= write then return 0 end
  redis.call('SET', KEYS[1], write, 'EX', ARGV[2])
end
local k, at = 2, 9
for _ = 1, n do
  local stream, count, job, inbox, owner = KEYS[k], tonumber(ARGV[at]), ARGV[at + 2], nil, nil
  k = k + 1
  if ARGV[at + 1] == '1' then inbox, k = KEYS[k], k + 1 end
  if job ~= '' then owner, k = KEYS[k], k + 1 end
  local first, last = at + 3, at + 2 + count
  at = last + 1
  if not owner or redis.call('SISMEMBER', owner, job) == 1 then
    local copied = inbox and redis.call('EXISTS', stream) == 0 and {ARGV[5], stream, ARGV[6], false}
    local id
    for i = first, last do
      id = redis.call('XADD', stream, '*', ARGV[1], ARGV[i])
      if copied then copied[#copied + 1], copied[#copied + 2] = ARGV[1], ARGV[i] end
    end
    redis.call('EXPIRE', stream, ARGV[2])
    if copied and id then
      copied[4] = id
      redis.call('XADD', inbox, 'MAXLEN', '~', ARGV[7], '*', unpack(copied))
      redis.call('EXPIRE', inbox, ARGV[2])
    end
  end
end
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


@dataclass(frozen=True)
class Along:
    """What goes with a job's events in their write."""

    #: Its reservation, settled with its last events.
    settle: Settlement | None = None
    #: Its gateway's inbox (``sluice.contract.inbox_key``), where its stream's first write is copied.
    inbox: str | None = None
    #: Its end (``sluice.fairqueue.Claims.end_of``), written with its last events.
    end: JobEnd | None = None
    #: The running set its events are written only while it is in (its worker's).
    owner: str | None = None


NOTHING = Along()


@dataclass
class Batch:
    """What one write carries: each job's events, and what goes with them, by job id."""

    events: dict[str, list[Event]] = field(default_factory=dict)
    along: dict[str, Along] = field(default_factory=dict)

    def add(self, job_id: str, events: Sequence[Event], along: Along = NOTHING) -> None:
        """Add ``events`` (after any of the job's already in), and with them ``along``'s parts
        (each part it sets replacing what an earlier add of the job set)."""
        self.events.setdefault(job_id, []).extend(events)
        if along is not NOTHING:
            was = self.along.get(job_id, NOTHING)
            self.along[job_id] = Along(
                along.settle or was.settle,
                along.inbox or was.inbox,
                along.end or was.end,
                along.owner or was.owner,
            )


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
        along = [batch.along.get(job_id, NOTHING) for job_id in batch.events]
        settles = [(job_id, a.settle) for job_id, a in zip(batch.events, along, strict=True) if a.settle]
        args: list[bytes | str | int] = [EVENT_FIELD, self._ttl, write, len(batch.events)]
        args += [INBOX_STREAM_FIELD, INBOX_LAST_FIELD, INBOX_MAXLEN, len(settles)]
        for (job_id, events), extra in zip(batch.events.items(), along, strict=True):
            merged = [encode(event) for event in coalesce(events)]
            inbox, owner = extra.inbox, extra.owner
            keys += [events_key(job_id), *([inbox] if inbox else []), *([owner] if owner else [])]
            args += [len(merged), "1" if inbox else "", job_id if owner else "", *merged]
        for job_id, (reservation, used) in settles:
            more_keys, more_args = settle_args(job_id, reservation, used)
            keys += more_keys
            args += more_args
        for extra in along:
            if extra.end is not None:
                keys += extra.end.keys
                args += extra.end.args
        if pipe is None:
            await self._append(keys=keys, args=args)
        else:
            await pipe.register_script(_APPEND)(keys=keys, args=args)
