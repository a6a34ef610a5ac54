"""The arq job: run one request on the engine and publish its events."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from sluice.contract import Delta, Done, Event, Failed, Job, Started, decode_job
from sluice.errors import SluiceError, internal
from worker.engines.base import Engine, Output
from worker.publish import EventPublisher

log = logging.getLogger("sluice.worker.job")


@dataclass(frozen=True)
class JobDeps:
    """What a job needs, put in arq's ``ctx`` once at start-up."""

    redis: Redis
    engine: Engine
    worker_id: str
    stream_ttl: int


def failed(error: SluiceError) -> Failed:
    return Failed(code=int(error.code), status=error.status, message=error.message, retryable=error.retryable)


def to_events(outputs: list[Output]) -> tuple[list[Event], bool]:
    """Engine outputs as stream events, and whether the generation has ended."""
    events: list[Event] = []
    for output in outputs:
        if isinstance(output, SluiceError):
            events.append(failed(output))
            return events, True
        events.append(output)
        if isinstance(output, Done):
            return events, True
    return events, False


async def run_job(deps: JobDeps, job: Job, attempt: int) -> None:
    publisher = EventPublisher(deps.redis, job.id, deps.stream_ttl)
    await publisher.publish([Started(worker=deps.worker_id, attempt=attempt)])
    generation = deps.engine.submit(f"{job.id}:{attempt}", job.input)
    sent = 0
    try:
        while True:
            events, ended = to_events(await generation.next_batch())
            await publisher.publish(events)
            sent += sum(e.tokens for e in events if isinstance(e, Delta))
            if ended:
                return
    except asyncio.CancelledError:
        # Aborted (the client left) or the worker is stopping: the engine must stop at once.
        generation.cancel()
        log.info("job %s cancelled after %d tokens", job.id, sent)
        raise
    except Exception as exc:
        generation.cancel()
        log.exception("job %s failed", job.id)
        await publisher.publish([failed(internal(type(exc).__name__))])


async def generate(ctx: dict[str, Any], payload: bytes) -> None:
    """The function arq runs; ``payload`` is an encoded :class:`sluice.contract.Job`."""
    await run_job(ctx["sluice"], decode_job(payload), attempt=ctx["job_try"])
