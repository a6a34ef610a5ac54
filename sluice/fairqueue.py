"""Fair share at dispatch: start-time fair queuing (Goyal et al., 1996) on arq's queue.

arq runs a queue's jobs in the order of their scores. Scored by arrival, one account's flood
would sit ahead of everyone who comes after it. Instead each job is scored with a *tag* in a
virtual time: an account's job starts where its previous one finished, or just past the queue's
clock if that is later (``tag = max(clock + 1 token, finish[account])``), and moves the account's
finish on by its cost (``finish[account] = tag + cost``). The clock is the tag of the latest job a
worker started (before any, the first arrival). An idle account's first job therefore lands at
the front of what waits, and a busy one's jobs interleave with everyone else's instead of
blocking them: each account gets its share of the workers, whatever its backlog. Waiting jobs
are those tagged above the clock, so a queue's depth is one ``ZCOUNT``.

Tags are milliseconds that begin at the first job's arrival and then advance by served cost
only, so they stay in the past: every job stays due for arq. A job's cost is its token
reservation (prompt + max_tokens), so shares are shares of the tokens served, as rate limits are.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from arq.constants import abort_jobs_ss, in_progress_key_prefix, job_key_prefix, retry_key_prefix
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from sluice.contract import (
    accepting_key,
    claim_receipts_key,
    direct_queue_key,
    fair_clock_key,
    fair_tags_key,
    pickup_channel,
    running_key,
)
from sluice.multiplex import Multiplexed, Script

#: Virtual milliseconds per token of cost: a large flood (thousands of jobs of thousands of
#: tokens) spans seconds of tags, far less than the time its jobs take to serve, so tags never
#: move into the future and defer a job; and each token is still several float steps at
#: epoch-millisecond magnitudes, so every job moves its account's tag.
MS_PER_TOKEN = 0.001
#: Idle this long, a queue's tags and clock are forgotten; they start again from the next arrival.
STATE_TTL_MS = 86_400_000
_CLOCK = "v"
#: A new clock starts this far before its first arrival, so that tags stay in the past (due for
#: arq) even for a burst that arrives before any job has started.
CLOCK_LEAD_MS = 60_000
#: How many of the jobs next in line are read for the oldest one's wait. Each account's oldest
#: waiting job is its lowest-tagged, near the clock, so these hold the oldest of up to as many
#: accounts.
OLDEST_AMONG = 64
#: How long a job's try count outlives its last run (arq's own figure, a day and some).
RETRY_COUNT_TTL_S = 88_400

# Jobs tagged at or below the clock have started (workers take them in tag order): arq keeps
# running jobs in its queue until they end. Those above it wait. (A job handed back or recovered
# waits below the clock; it is next to run, and counted as running until it does.)
# backlog(queue, tags, clock, account ('' for the whole queue), now (ms), OLDEST_AMONG,
# MS_PER_TOKEN) -> running, waiting (ahead of the account's next job), and when the first
# OLDEST_AMONG of those arrived (ms; false if none tells): a request id is a UUIDv7, whose first
# 48 bits are its arrival in Unix milliseconds (sluice/ids.py).
_BACKLOG_OF = """
local function backlog(queue, tags, clock_key, account, now, among, step)
  local clock = redis.call('ZSCORE', clock_key, 'v')
  local low, running = '-inf', 0
  if clock then
    low, running = '(' .. clock, redis.call('ZCOUNT', queue, '-inf', clock)
  end
  local high = '+inf'
  if account ~= '' then
    local start = tonumber(clock or now) + tonumber(step)
    start = math.max(start, tonumber(redis.call('ZSCORE', tags, account) or 0))
    high = '(' .. string.format('%.17g', start)
  end
  local waiting = redis.call('ZCOUNT', queue, low, high)
  local oldest = false
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', queue, low, high, 'LIMIT', 0, among)) do
    if #id == 32 and string.sub(id, 13, 13) == '7' then
      local arrived = tonumber(string.sub(id, 1, 12), 16)
      if arrived and (not oldest or arrived < oldest) then oldest = arrived end
    end
  end
  return running, waiting, oldest
end
"""

# KEYS: queue, tags, clock.  ARGV: account ('' for the whole queue), now (ms), OLDEST_AMONG,
# MS_PER_TOKEN.  Returns backlog()'s three.
_BACKLOG = (
    _BACKLOG_OF
    + """
return {backlog(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4])}
"""
)

# KEYS: the model's queue, job key, its tags, its clock; a worker's own queue, its tags, its
# clock, and that worker's accepting key (the model's four again when not routed).
# ARGV: job id, job data, job data TTL (ms), account, cost (tokens), now (ms), MS_PER_TOKEN,
# STATE_TTL_MS, CLOCK_LEAD_MS, the two queues' pickup channels, OLDEST_AMONG, and the queues'
# limits: how many may wait ahead ('' for no limit) and how long the oldest of them may have
# waited (ms), checked on the queue the job would go to.
# Returns the tag and whether the job went to the worker's queue (the workers of the queue it
# went to are woken); or, refused for the limits, '' and backlog()'s three, nothing written.
# Routed only while the worker accepts, checked here, atomically: a worker that drains, stops or
# dies never has a job land in its queue after it handed that queue back. Routing is a preference
# (an adapter already loaded, a warm prefix cache): a job whose worker's queue is past the limits
# goes to the model's queue instead, for any worker, and is refused only if that one is too.
# Numbers are formatted with %.17g: Redis renders Lua numbers with 14 digits, too few for tags.
_ENQUEUE_FN = (
    _BACKLOG_OF
    + """
local function refusal(queue, tags, clock_key, ARGV)
  if ARGV[13] == '' then return nil end
  local running, waiting, oldest = backlog(queue, tags, clock_key, ARGV[4], ARGV[6], ARGV[12], ARGV[7])
  local waited = oldest and tonumber(ARGV[6]) - oldest or 0
  if waiting >= tonumber(ARGV[13]) or waited >= tonumber(ARGV[14]) then
    return {'', running, waiting, oldest}
  end
  return nil
end
local function enqueue(KEYS, ARGV)
  local queue, tags, clock_key, channel, routed = KEYS[1], KEYS[3], KEYS[4], ARGV[10], 0
  if KEYS[8] ~= KEYS[4] and redis.call('EXISTS', KEYS[8]) == 1
      and not refusal(KEYS[5], KEYS[6], KEYS[7], ARGV) then
    queue, tags, clock_key, channel, routed = KEYS[5], KEYS[6], KEYS[7], ARGV[11], 1
  else
    local refused = refusal(queue, tags, clock_key, ARGV)
    if refused then return refused end
  end
  local clock = redis.call('ZSCORE', clock_key, 'v')
  if not clock then
    clock = string.format('%.17g', tonumber(ARGV[6]) - tonumber(ARGV[9]))
    redis.call('ZADD', clock_key, clock, 'v')
  end
  redis.call('PEXPIRE', clock_key, ARGV[8])
  local step = tonumber(ARGV[7])
  local tag = math.max(tonumber(clock) + step, tonumber(redis.call('ZSCORE', tags, ARGV[4]) or 0))
  local finish = tag + tonumber(ARGV[5]) * step
  redis.call('ZADD', tags, string.format('%.17g', finish), ARGV[4])
  redis.call('PEXPIRE', tags, ARGV[8])
  redis.call('PSETEX', KEYS[2], ARGV[3], ARGV[2])
  redis.call('ZADD', queue, string.format('%.17g', tag), ARGV[1])
  redis.call('PUBLISH', channel, '1')
  return {string.format('%.17g', tag), routed}
end
"""
)
_ENQUEUE = _ENQUEUE_FN + "return enqueue(KEYS, ARGV)\n"

# KEYS: the gate's keys, then the enqueue's.  ARGV: how many of the keys and of the arguments
# are the gate's, its arguments, then the enqueue's.  Returns {the gate's answer} when it refuses
# (nothing queued), else {its answer, the enqueue's}; an admission the queue's limits then refuse
# is undone (ungate), so a refused job holds nothing.
_GATED = """
local nk, na = tonumber(ARGV[1]), tonumber(ARGV[2])
local gate_keys, gate_args, keys, args = {}, {}, {}, {}
for i, key in ipairs(KEYS) do
  if i <= nk then gate_keys[i] = key else keys[i - nk] = key end
end
for i = 3, #ARGV do
  if i - 2 <= na then gate_args[i - 2] = ARGV[i] else args[i - 2 - na] = ARGV[i] end
end
local answer = gate(gate_keys, gate_args)
if answer[1] ~= 'ok' then return {answer} end
local queued = enqueue(keys, args)
if queued[1] == '' then answer = ungate(gate_keys, gate_args, answer) end
return {answer, queued}
"""

# KEYS: a worker's own queue, the model's queue, its clock.  ARGV: MS_PER_TOKEN, now (ms),
# CLOCK_LEAD_MS, arq's in-progress key prefix, the model queue's pickup channel.  Moves every job
# not running to the model's queue (and wakes its workers),
# tagged half a token past its clock: above it (waiting), below any new arrival (they have waited
# already: the front of the line). Returns how many. One script: no job starts mid-move.
_HAND_BACK = """
local clock = redis.call('ZSCORE', KEYS[3], 'v')
local start = clock and tonumber(clock) or (tonumber(ARGV[2]) - tonumber(ARGV[3]))
local tag = string.format('%.17g', start + tonumber(ARGV[1]) / 2)
local moved = 0
for _, job in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if redis.call('EXISTS', ARGV[4] .. job) == 0 then
    redis.call('ZADD', KEYS[2], tag, job)
    redis.call('ZREM', KEYS[1], job)
    moved = moved + 1
  end
end
if moved > 0 then
  redis.call('PUBLISH', ARGV[5], '1')
end
return moved
"""


@dataclass(frozen=True)
class Backlog:
    """Jobs running, and waiting (all, or those ahead of one account's next job) with the
    longest wait among them."""

    running: int
    waiting: int
    oldest_wait: float


@dataclass(frozen=True)
class QueueLimits:
    """Backpressure: at most ``depth`` jobs waiting ahead of a new one, the oldest for at most
    ``wait`` seconds."""

    depth: int
    wait: float


@dataclass(frozen=True)
class Gate:
    """A check of the job's admission (rate limits, say) run in its enqueue's script, before it:
    one round trip for both, and no admission held by a job the queue refuses.

    ``lua`` defines two functions of ``(KEYS, ARGV)``, each called with ``keys`` and ``args``:
    ``gate``, which admits (its answer's first item ``'ok'``) or refuses, and ``ungate``, which
    undoes an admission when the queue's limits refuse the job after all, and is also given the
    gate's answer to return as it stands once undone."""

    lua: str
    keys: Sequence[str]
    args: Sequence[str | int]


@dataclass(frozen=True)
class Enqueued:
    #: Whether the job went to the worker it was routed to.
    routed: bool
    #: Set when it was refused for the queue's limits (and not queued): what stood ahead of it.
    refused: Backlog | None = None
    #: The gate's answer, when there was one; unless it admitted the job, nothing was queued.
    gate: list[Any] | None = None


class FairQueue:
    """The gateway's side: tag jobs as they are enqueued, and tell where an account's next would go."""

    def __init__(self, redis: Redis, *, connection: Multiplexed | None = None) -> None:
        """``connection``: where the enqueue runs, if not on ``redis`` (it is on each request's
        path: ``sluice/multiplex.py``)."""
        self._scripts = connection or redis
        self._enqueue = self._scripts.register_script(_ENQUEUE)
        self._gated: dict[str, AsyncScript | Script] = {}  # by gate
        self._backlog = redis.register_script(_BACKLOG)
        self._hand_back = redis.register_script(_HAND_BACK)

    async def enqueue(
        self,
        queue: str,
        job_id: str,
        job_key: str,
        data: bytes,
        *,
        worker: str | None,
        expires_ms: int,
        account: str,
        cost: int,
        now_ms: int,
        limits: QueueLimits | None = None,
        gate: Gate | None = None,
    ) -> Enqueued:
        """Store the job's data and queue it at its account's tag, atomically: on ``worker``'s own
        queue if it names one that still accepts jobs, else on ``queue``. With ``limits``, only
        if what waits ahead of it there is within them (else nothing is written); with
        ``gate``, only if it admits the job."""
        shared = [queue, job_key, fair_tags_key(queue), fair_clock_key(queue)]
        routed, direct = shared, queue
        if worker is not None:
            direct = direct_queue_key(queue, worker)
            routed = [direct, fair_tags_key(direct), fair_clock_key(direct), accepting_key(worker)]
        args: list[bytes | str | int | float]
        args = [job_id, data, expires_ms, account, cost, now_ms, MS_PER_TOKEN, STATE_TTL_MS, CLOCK_LEAD_MS]
        args += [pickup_channel(queue), pickup_channel(direct), OLDEST_AMONG]
        args += [limits.depth, int(limits.wait * 1000)] if limits is not None else ["", ""]
        keys = [*shared, *routed]
        if gate is None:
            return _enqueued(await self._enqueue(keys=keys, args=args), now_ms)
        script = self._gated.get(gate.lua) or self._gated.setdefault(
            gate.lua, self._scripts.register_script(gate.lua + _ENQUEUE_FN + _GATED)
        )
        counts = [len(gate.keys), len(gate.args)]
        answer, *queued = await script(keys=[*gate.keys, *keys], args=[*counts, *gate.args, *args])
        if not queued:
            return Enqueued(routed=False, gate=answer)
        return dataclasses.replace(_enqueued(queued[0], now_ms), gate=answer)

    async def hand_back(self, queue: str, worker: str) -> int:
        """Move the jobs routed to ``worker`` that it has not started to ``queue``, ahead of what
        waits there (they have waited already); returns how many."""
        keys = [direct_queue_key(queue, worker), queue, fair_clock_key(queue)]
        args: list[str | int | float] = [
            MS_PER_TOKEN,
            int(time.time() * 1000),
            CLOCK_LEAD_MS,
            in_progress_key_prefix,
            pickup_channel(queue),
        ]
        return int(await self._hand_back(keys=keys, args=args))

    async def backlog(self, queue: str, account: str | None = None) -> Backlog:
        """The queue as a new job of ``account`` would find it (``None``: the whole queue)."""
        now = time.time()
        keys = [queue, fair_tags_key(queue), fair_clock_key(queue)]
        args: list[str | int | float] = [account or "", int(now * 1000), OLDEST_AMONG, MS_PER_TOKEN]
        running, waiting, oldest = await self._backlog(keys=keys, args=args)
        return _backlog(running, waiting, oldest, now)


def _enqueued(reply: list[Any], now_ms: int) -> Enqueued:
    tag, *rest = reply
    if tag == b"":
        running, waiting, oldest = rest
        return Enqueued(routed=False, refused=_backlog(running, waiting, oldest, now_ms / 1000))
    return Enqueued(routed=bool(rest[0]))


def _backlog(running: int, waiting: int, oldest_ms: int | None, now: float) -> Backlog:
    # A job whose id tells no arrival (not a request's) has not waited, as far as is known.
    waited = max(0.0, now - oldest_ms / 1000) if oldest_ms else 0.0
    return Backlog(int(running), int(waiting), waited)


# KEYS: queue, clock, arq's aborted jobs, the worker's running set, its claims' receipts.
# ARGV: arq's in-progress, job and retry key prefixes, the in-progress TTL (ms), how many to take,
# now (ms), STATE_TTL_MS, the retry count's TTL (s), the claim's number.
# Walks the due jobs in tag order (running ones, still in arq's queue, are skipped by their
# in-progress mark) and marks up to that many as this worker's, in arq's mark and in the worker's
# running set (what recovery reads should the worker die); the clock moves up to the highest tag
# taken. Each taken job also gets what arq reads before running it (its data, its try counted,
# whether it was aborted while queued). Returns id, data (false if expired), try, aborted (0/1)
# per job, flat. arq takes a job in four round trips (WATCH, EXISTS, ZSCORE, MULTI) and reads it
# in a fifth, and the worker recorded it in a sixth; this is one for all of them, on the TTFT path.
# The answer is kept as the receipt of the claim's number (the worker's last, per queue, until it
# deregisters or its marks would have expired): asked again under the same number (its
# reply was lost to a failing connection), the script answers it again instead of taking more, so
# jobs it took are not left marked as this worker's, never to start until their mark expires.
_CLAIM = """
local receipt = redis.call('HGET', KEYS[5], KEYS[1])
if receipt then
  local number, kept = unpack(cmsgpack.unpack(receipt))
  if number == ARGV[9] then return kept end
end
local taken, offset, want, top = {}, 0, tonumber(ARGV[5]) * 4, nil
while #taken < want do
  local page = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[6], 'WITHSCORES', 'LIMIT', offset, 128)
  if #page == 0 then break end
  for i = 1, #page, 2 do
    local id = page[i]
    local mark = ARGV[1] .. id
    if redis.call('EXISTS', mark) == 0 then
      redis.call('PSETEX', mark, ARGV[4], '1')
      redis.call('SADD', KEYS[4], id)
      local try = redis.call('INCR', ARGV[3] .. id)
      redis.call('EXPIRE', ARGV[3] .. id, ARGV[8])
      local n = #taken
      taken[n + 1], taken[n + 2] = id, redis.call('GET', ARGV[2] .. id)
      taken[n + 3], taken[n + 4] = try, redis.call('ZREM', KEYS[3], id)
      top = page[i + 1]
      if #taken >= want then break end
    end
  end
  offset = offset + 128
end
if top then
  redis.call('ZADD', KEYS[2], 'GT', top, 'v')
  redis.call('PEXPIRE', KEYS[2], ARGV[7])
end
redis.call('HSET', KEYS[5], KEYS[1], cmsgpack.pack({ARGV[9], taken}))
redis.call('PEXPIRE', KEYS[5], ARGV[4])
return taken
"""

# finish(queue, the worker's running set, arq's aborted jobs, the job's in-progress, retry and job
# keys, the job id, '1' if it is over ('' to leave it queued, unmarked, for another claim), the
# queue's pickup channel): arq's finish_job for a job whose result is not kept, and the job out of
# the running set. A job left queued wakes the queue's workers: one takes it now, not at its next
# fallback poll (a rolling update hands back every job a stopping worker runs). Also run by the
# write of a job's last events (``sluice/events.py``), as part of it. Only for a job still in
# the running set: one recovery took from a stalled worker (and another worker may run again)
# is not this worker's to end; and an end written twice is written once.
FINISH_FN = """
local function finish(queue, running, aborts, in_progress, retry, job, id, over, channel)
  if redis.call('SREM', running, id) == 0 then return 0 end
  if over == '' then
    redis.call('DEL', in_progress)
    return redis.call('PUBLISH', channel, '1')
  end
  redis.call('DEL', in_progress, retry, job)
  redis.call('ZREM', aborts, id)
  return redis.call('ZREM', queue, id)
end
"""
_FINISH = FINISH_FN + "return finish(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], unpack(ARGV))\n"


@dataclass(frozen=True)
class JobEnd:
    """A job's end, as :data:`FINISH_FN`'s six keys and three other arguments."""

    keys: list[str]
    args: list[str]

    @property
    def running(self) -> str:
        """The running set of the job's worker: the job is that worker's while in it."""
        return self.keys[1]


@dataclass(frozen=True)
class Claimed:
    """A job a worker took, with what arq reads before running one."""

    id: str
    #: arq's serialized job; ``None`` once it expired.
    data: bytes | None
    #: This run's try, counted from 1 (arq's retry count, raised by the claim).
    attempt: int
    #: Aborted while it waited: not to be run.
    aborted: bool


class Claims:
    """A worker's side: take the next jobs of a queue, in fair-share order, recorded as running
    in the worker's running set (``sluice.contract.running_key``)."""

    def __init__(self, redis: Redis | Multiplexed, worker_id: str) -> None:
        self._claim = redis.register_script(_CLAIM)
        self._finish = redis.register_script(_FINISH)
        self._running = running_key(worker_id)
        self._receipts = claim_receipts_key(worker_id)
        # This object's own (a worker restarted under the same id must not be answered its
        # predecessor's last claim), then a count.
        self._numbers = (f"{uuid.uuid4().hex[:16]}:{n}" for n in itertools.count(1))
        self._unanswered: dict[str, str] = {}  # queue -> the number of a claim whose reply was lost

    async def take(self, queue: str, count: int, mark_ms: int) -> list[Claimed]:
        """Up to ``count`` due jobs of ``queue`` no worker has started, each marked in progress
        (for ``mark_ms``, as arq marks them) and recorded as running, its try counted and its
        abort taken, and the queue's clock moved up to them, atomically; in tag order.

        After a take that failed (its reply lost, say, to Redis stopping), the next one first
        asks again for what that one took, if it took anything."""
        number = self._unanswered.setdefault(queue, next(self._numbers))
        args: list[str | int] = [
            in_progress_key_prefix,
            job_key_prefix,
            retry_key_prefix,
            mark_ms,
            count,
            int(time.time() * 1000),
            STATE_TTL_MS,
            RETRY_COUNT_TTL_S,
            number,
        ]
        keys = [queue, fair_clock_key(queue), abort_jobs_ss, self._running, self._receipts]
        flat = await self._claim(keys=keys, args=args)
        del self._unanswered[queue]
        rows = [flat[i : i + 4] for i in range(0, len(flat), 4)]
        return [
            Claimed(job.decode(), data, int(attempt), aborted == 1) for job, data, attempt, aborted in rows
        ]

    def end_of(self, queue: str, job_id: str, *, over: bool = True) -> JobEnd:
        """The job's end, in arq's keys and the running set: ``over``, it is done (arq's
        ``finish_job``, its result not kept); else it stays queued, unmarked, for another claim
        (its try counted)."""
        keys = [queue, self._running, abort_jobs_ss]
        keys += [prefix + job_id for prefix in (in_progress_key_prefix, retry_key_prefix, job_key_prefix)]
        return JobEnd(keys, [job_id, "1" if over else "", pickup_channel(queue)])

    async def finish(self, queue: str, job_id: str, *, over: bool) -> None:
        """Write the job's end (:meth:`end_of`), in one script."""
        end = self.end_of(queue, job_id, over=over)
        await self._finish(keys=end.keys, args=end.args)
