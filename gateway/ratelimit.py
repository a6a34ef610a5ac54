"""Per-key limits that hold exactly across gateway replicas: one atomic Redis script per admission,
the one that queues the request's job (as its :class:`~sluice.fairqueue.Gate`).

Three limits per key, each a sliding window over the last minute (or, for concurrency, the requests
in flight): requests per minute, tokens per minute and concurrent requests. Tokens are *reserved*
at admission (prompt tokens + max_tokens, so a stream cannot overdraw) and reconciled with the real
usage when the request ends (a stream that ends early gives back what it did not use).

Why Lua rather than a library: the three checks and the reservation must succeed or fail together,
in one step, so N replicas admit exactly the limit, and a reservation must later be resized in
place. Rate-limit libraries (``limits``, ``aiolimiter``) count one limit per call and have no
reservation to reconcile; checking them one after another lets replicas race between the checks.

The admission's answer also says when each window next frees (``Retry-After`` and OpenAI's
``x-ratelimit-*`` headers are computed from it, not guessed).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import RedisError

from sluice.contract import Reservation
from sluice.errors import bad_input
from sluice.fairqueue import Gate
from sluice.keys import KeyRecord
from sluice.reservations import SETTLE_FN, limit_keys, settle_args

log = logging.getLogger("sluice.gateway.ratelimit")

WINDOW_MS = 60_000

# The tokens reserved in the window are kept as a running total beside their set: adding the set
# up at every admission cost Redis time in proportion to the key's requests per minute (a key
# allowed 100,000 a minute would have had each admission read up to 100,000 entries). Each
# reservation is added once and taken off once, as it leaves the window or is resized; a total
# that is missing (or whose set is gone) is counted afresh from the set, once.
_RESERVED = """
local function amount(member)
  return tonumber(string.match(member, ':(%d+)$'))
end
local function reserved_total(tokens, total, horizon)
  local used = redis.call('GET', total)
  local kept = used and redis.call('EXISTS', tokens) == 1
  local leaving = redis.call('ZRANGEBYSCORE', tokens, '-inf', horizon)
  redis.call('ZREMRANGEBYSCORE', tokens, '-inf', horizon)
  if kept then
    used = tonumber(used)
    for _, member in ipairs(leaving) do
      used = used - amount(member)
    end
  else
    used = 0
    for _, member in ipairs(redis.call('ZRANGE', tokens, 0, -1)) do
      used = used + amount(member)
    end
  end
  return math.max(used, 0)
end
"""

# KEYS: requests (zset id->time), tokens (zset "id:amount"->time), in flight (zset id->lease end),
# the tokens' running total.  ARGV: now, window, rpm, tpm, concurrency, id, cost, lease
_ADMIT_FN = (
    _RESERVED
    + """
local function admit(KEYS, ARGV)
  local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
  local rpm, tpm, conc = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
  local id, cost, lease = ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8])
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  local requests = redis.call('ZCARD', KEYS[1])
  local used = reserved_total(KEYS[2], KEYS[4], now - window)
  local function next_request_slot()
    if requests < rpm then return 0 end
    local oldest = redis.call('ZRANGE', KEYS[1], requests - rpm, requests - rpm, 'WITHSCORES')
    return tonumber(oldest[2]) + window - now
  end
  -- Only when the tokens are short: oldest first, until enough of them will have left the window.
  local function tokens_free_for(need)
    local free = tpm - used
    if need <= free then return 0 end
    local reservations = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
    for i = 1, #reservations, 2 do
      free = free + amount(reservations[i])
      if need <= free then return tonumber(reservations[i + 1]) + window - now end
    end
    return window
  end
  local in_flight = redis.call('ZCARD', KEYS[3])
  local verdict = 'ok'
  if requests >= rpm then verdict = 'requests'
  elseif used + cost > tpm then verdict = 'tokens'
  elseif in_flight >= conc then verdict = 'concurrency'
  else
    redis.call('ZADD', KEYS[1], now, id)
    redis.call('ZADD', KEYS[2], now, id .. ':' .. cost)
    redis.call('ZADD', KEYS[3], now + lease, id)
    redis.call('PEXPIRE', KEYS[1], window)
    redis.call('PEXPIRE', KEYS[2], window)
    redis.call('PEXPIRE', KEYS[3], lease)
    requests, used = requests + 1, used + cost
  end
  local ttl = redis.call('PTTL', KEYS[2])  -- -2: the set is gone, and the total goes with it
  if ttl > 0 then
    redis.call('SET', KEYS[4], used, 'PX', ttl)
  end
  return {verdict, requests, used, next_request_slot(), tokens_free_for(verdict == 'tokens' and cost or 1)}
end
"""
)
_ADMIT = _ADMIT_FN + "return admit(KEYS, ARGV)\n"

# The admission as the gate of the job's enqueue (sluice/fairqueue.py, Gate), with the same
# KEYS and ARGV. Its undoing, when the queue refuses the job, leaves no trace of it: the request
# does not count against the key's requests per minute, and reserved nothing; the admission's
# answer, for the response's quota headers, then counts it out too.
_GATE = (
    _ADMIT_FN
    + """
local gate = admit
local function ungate(KEYS, ARGV, answer)
  local id, cost = ARGV[6], ARGV[7]
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZREM', KEYS[3], id)
  if redis.call('ZREM', KEYS[2], id .. ':' .. cost) == 1 and redis.call('EXISTS', KEYS[4]) == 1 then
    redis.call('DECRBY', KEYS[4], cost)
  end
  answer[2], answer[3] = answer[2] - 1, answer[3] - tonumber(cost)
  if answer[2] < tonumber(ARGV[3]) then answer[4] = 0 end  -- a request slot is free now
  if answer[3] < tonumber(ARGV[4]) then answer[5] = 0 end  -- and a token
  return answer
end
"""
)

# KEYS: reservations, in flight, the running total. ARGV: id, reserved, used
_RELEASE = SETTLE_FN + "return settle(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3])\n"


@dataclass(frozen=True)
class Quota:
    """A key's limits and what is left of them, as of one admission."""

    rpm: int
    tpm: int
    requests_left: int
    tokens_left: int
    #: Seconds until the next request slot / the requested tokens free up (0: now).
    requests_reset: float
    tokens_reset: float

    def headers(self) -> dict[str, str]:
        """OpenAI's rate-limit headers (``reset`` as OpenAI writes durations, e.g. ``1.5s``)."""
        return {
            "x-ratelimit-limit-requests": str(self.rpm),
            "x-ratelimit-remaining-requests": str(max(0, self.requests_left)),
            "x-ratelimit-reset-requests": f"{self.requests_reset:g}s",
            "x-ratelimit-limit-tokens": str(self.tpm),
            "x-ratelimit-remaining-tokens": str(max(0, self.tokens_left)),
            "x-ratelimit-reset-tokens": f"{self.tokens_reset:g}s",
        }


@dataclass(frozen=True)
class Admission:
    quota: Quota
    #: The limit that refused the request (``requests``, ``tokens``, ``concurrency``), if any.
    refused: str | None = None
    retry_after: float = 0.0


@dataclass(frozen=True)
class EffectiveLimits:
    rpm: int
    tpm: int
    concurrency: int


@dataclass(frozen=True)
class AdmissionGate:
    """One admission, as its script's keys and arguments; :meth:`read` its answer."""

    gate: Gate
    limits: EffectiveLimits

    def read(self, answer: list[Any]) -> Admission:
        limits = self.limits
        verdict, requests, used, request_wait, token_wait = answer
        quota = Quota(
            rpm=limits.rpm,
            tpm=limits.tpm,
            requests_left=limits.rpm - int(requests),
            tokens_left=limits.tpm - int(used),
            requests_reset=round(int(request_wait) / 1000, 3),
            tokens_reset=round(int(token_wait) / 1000, 3),
        )
        reason = verdict.decode() if isinstance(verdict, bytes) else str(verdict)
        if reason == "ok":
            return Admission(quota)
        # A concurrency slot frees when some request ends: no window says when; a second is a guess.
        wait = {"requests": quota.requests_reset, "tokens": quota.tokens_reset}.get(reason, 1.0)
        return Admission(quota, refused=reason, retry_after=max(wait, 0.001))


class RateLimiter:
    """Admits requests against their keys' limits. A request in flight holds one of its key's
    concurrent slots for ``lease_seconds`` at a time: :meth:`keep_leases` renews those of this
    process's requests until they are released, so the slots of a gateway that dies free within
    a lease, not at its requests' deadline."""

    def __init__(
        self,
        redis: Redis,
        defaults: EffectiveLimits,
        lease_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._clock = clock  # seconds since the epoch: shared by every gateway
        self._defaults = defaults
        self._lease_ms = int(lease_seconds * 1000)
        self._admit = redis.register_script(_ADMIT)
        self._release = redis.register_script(_RELEASE)
        self._held: dict[str, KeyRecord] = {}  # request id -> its key, while in flight here

    def limits_of(self, key: KeyRecord) -> EffectiveLimits:
        own, default = key.limits, self._defaults
        return EffectiveLimits(
            rpm=own.rpm if own.rpm is not None else default.rpm,
            tpm=own.tpm if own.tpm is not None else default.tpm,
            concurrency=own.concurrency if own.concurrency is not None else default.concurrency,
        )

    async def admit(self, key: KeyRecord, request_id: str, cost: int) -> Admission:
        """Admit one request costing ``cost`` tokens, or say which limit refuses it and until when."""
        gate = self.gate(key, request_id, cost)
        admission = gate.read(
            await cast(Awaitable[list[Any]], self._admit(keys=gate.gate.keys, args=gate.gate.args))
        )
        if admission.refused is None:
            self.hold(key, request_id)
        return admission

    def hold(self, key: KeyRecord, request_id: str) -> None:
        """An admitted request is in flight here: its lease is renewed until it is released."""
        self._held[request_id] = key

    def gate(self, key: KeyRecord, request_id: str, cost: int) -> AdmissionGate:
        """:meth:`admit` as the gate of the request's enqueue, in its script (one round trip less
        before the job is queued); a job the queue refuses then holds no admission."""
        limits = self.limits_of(key)
        if cost > limits.tpm:
            raise bad_input(
                f"this request may use {cost} tokens (prompt + max_tokens), more than the key's limit of "
                f"{limits.tpm} tokens per minute: lower max_tokens",
                param="max_tokens",
            )
        now = int(self._clock() * 1000)
        args: list[str | int] = [now, WINDOW_MS, limits.rpm, limits.tpm, limits.concurrency]
        args += [request_id, cost, self._lease_ms]
        return AdmissionGate(Gate(_GATE, limit_keys(key.id), args), limits)

    async def release(self, key: KeyRecord, request_id: str, reserved: int, actual: int) -> None:
        """The request ended: its slot freed, its reservation resized to what it really used."""
        self._held.pop(request_id, None)
        keys, args = settle_args(request_id, Reservation(key.id, reserved), actual)
        await self._release(keys=keys, args=args)

    def forget(self, request_id: str) -> None:
        """The request's end was settled by its worker: its lease is no longer renewed here."""
        self._held.pop(request_id, None)

    async def renew(self) -> None:
        """Extend the leases of the requests in flight here (one round trip for all). A released
        one is not brought back: the renewal only updates members still there."""
        until = int(self._clock() * 1000) + self._lease_ms
        by_key: dict[str, list[str]] = {}
        for request_id, key in self._held.items():
            by_key.setdefault(limit_keys(key.id)[2], []).append(request_id)
        if not by_key:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for in_flight, ids in by_key.items():
                pipe.zadd(in_flight, dict.fromkeys(ids, until), xx=True)
                pipe.pexpire(in_flight, self._lease_ms)
            await pipe.execute()

    async def keep_leases(self, every: float) -> None:
        """:meth:`renew` every ``every`` seconds (well within a lease), until cancelled."""
        while True:
            await asyncio.sleep(every)
            try:
                # Bounded: a half-open connection must not stop the renewals for good.
                async with asyncio.timeout(every):
                    await self.renew()
            except (RedisError, OSError, TimeoutError) as exc:
                log.warning("rate-limit leases not renewed (Redis unavailable): %s", exc)
