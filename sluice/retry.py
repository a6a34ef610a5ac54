"""Riding out a Redis blip: the writes that must land (a job's events, its end, an abort) are
asked again for a few seconds when Redis is unreachable, each retry logged.

Each such write is safe to repeat (numbered appends, idempotent scripts), and a few seconds cover
a Redis restarting from its append-only file. Past them the caller's own error handling takes
over: by then the gateway has ended the streams it relays with a 503 error.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

T = TypeVar("T")

#: redis-py's retry helper: about 6 s of exponential backoff on connection errors, then give up.
RIDE_OUT = Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=10)


async def _not_yet(log: logging.Logger, what: str, error: Exception) -> None:
    log.warning("%s not written yet (Redis unavailable), retrying: %s", what, error)


async def ride_out(do: Callable[[], Awaitable[T]], what: str, log: logging.Logger) -> T:
    """``do()``, asked again over a Redis blip; raises its last error past :data:`RIDE_OUT`."""
    return await RIDE_OUT.call_with_retry(do, functools.partial(_not_yet, log, what))
