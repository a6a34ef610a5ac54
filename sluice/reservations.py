"""A key's rate-limit state in Redis, as both sides write it: the keys that hold it, and the
settlement of a request's reservation when the request ends.

The gateway admits requests (``gateway/ratelimit.py``). A request's end is settled by the worker,
in the same script as the write of its job's last event (``sluice/events.py``): by the time the
gateway reads that event, the key's slot is free again and its reservation holds only the tokens
the request used, at no round trip of the gateway's own. The gateway settles the ends that have
no such event (the client left, the deadline passed, the job failed) itself.
"""

from __future__ import annotations

from sluice.contract import Reservation


def limit_keys(key_id: str) -> list[str]:
    """A key's requests (zset id -> time), reservations (zset "id:tokens" -> time), requests in
    flight (zset id -> lease end) and the reservations' running total."""
    # One hash tag per key: its sets and total stay together, in one slot should Redis be a cluster.
    base = f"sluice:rl:{{{key_id}}}"
    # (The reservations' set is not the ``:tokens`` of releases before the running total: a
    # gateway of each during a rolling update then keeps its own, instead of one miscounting.)
    return [f"{base}:requests", f"{base}:reserved", f"{base}:inflight", f"{base}:reserved:total"]


# settle(reservations, in flight, total, request id, tokens reserved, tokens used): the request's
# slot freed, its reservation resized to what it used (at its admission's time, so it leaves the
# window when it would have). Settling twice changes nothing: the second finds no reservation of
# the reserved size. Returns 1 if it resized one.
SETTLE_FN = """
local function settle(tokens, inflight, total, id, reserved, used)
  redis.call('ZREM', inflight, id)
  local member = id .. ':' .. reserved
  local at = redis.call('ZSCORE', tokens, member)
  if not at then return 0 end
  redis.call('ZREM', tokens, member)
  redis.call('ZADD', tokens, at, id .. ':' .. used)
  if redis.call('EXISTS', total) == 1 then
    redis.call('INCRBY', total, tonumber(used) - tonumber(reserved))
  end
  return 1
end
"""


def settle_args(request_id: str, reservation: Reservation, used: int) -> tuple[list[str], list[str | int]]:
    """:data:`SETTLE_FN`'s keys and its other arguments, for a request that used ``used`` tokens."""
    keys = limit_keys(reservation.key)[1:]  # reservations, in flight, the running total
    return keys, [request_id, reservation.tokens, min(used, reservation.tokens)]
