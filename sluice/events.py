"""Appending events to a job's stream: the one write path, for the worker's publisher and for
recovery (which ends a killed worker's half-sent streams with an error event)."""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio.client import Pipeline

from sluice.contract import EVENT_FIELD, Event, Failed, coalesce, encode, events_key
from sluice.errors import SluiceError


def failed(error: SluiceError) -> Failed:
    return Failed(code=int(error.code), status=error.status, message=error.message, retryable=error.retryable)


def append(pipe: Pipeline, job_id: str, events: Sequence[Event], ttl_seconds: int) -> None:
    """Queue on ``pipe`` the writes of ``events`` (consecutive deltas merged into one)."""
    key = events_key(job_id)
    for event in coalesce(events):
        pipe.xadd(key, {EVENT_FIELD: encode(event)})
    # Refreshed on every write: a stream lives ttl seconds past its last event.
    pipe.expire(key, ttl_seconds)
