"""The worker process: load the engine, then take jobs from the model's arq queue.

arq picks jobs; Sluice tunes it for token streaming: a poll interval of a few milliseconds instead
of 0.5 s, many jobs at once (the engine batches them), aborts enabled so a client that leaves
stops its generation, and no results kept (results travel on the job's event stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
import uuid

from arq import Worker
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.worker import func

from sluice.config import Settings
from sluice.contract import (
    GENERATE,
    WorkerInfo,
    deserialize_arq_job,
    queue_key,
    serialize_arq_job,
    tokenizer_key,
)
from sluice.registry import deregister, heartbeat
from worker.engines import create_engine
from worker.job import JobDeps, generate
from worker.metrics import serve_metrics
from worker.publish import EventPublisher

log = logging.getLogger("sluice.worker")

#: Seconds in-flight jobs get to finish after SIGTERM/SIGINT before they are handed back to the queue.
SHUTDOWN_GRACE = 10.0


def build_worker(settings: Settings, deps: JobDeps, queue: str, pool: ArqRedis) -> Worker:
    return Worker(
        functions=[func(generate, name=GENERATE, timeout=settings.job_timeout)],
        queue_name=queue,
        redis_pool=pool,
        max_jobs=settings.worker_concurrency,
        poll_delay=settings.poll_delay,
        allow_abort_jobs=True,
        keep_result=0,
        job_timeout=settings.job_timeout,
        handle_signals=False,
        ctx={"sluice": deps},
        job_serializer=serialize_arq_job,
        job_deserializer=deserialize_arq_job,
    )


async def serve(settings: Settings) -> None:
    served = settings.worker_served()
    queue = queue_key(served.name)
    engine = create_engine(served, settings)
    started = time.monotonic()
    await engine.start()
    log.info("engine %s ready with %s in %.1fs", engine.name, served.model, time.monotonic() - started)

    assert settings.redis_url is not None
    pool = await create_pool(
        RedisSettings.from_dsn(settings.redis_url),
        job_serializer=serialize_arq_job,
        job_deserializer=deserialize_arq_job,
        default_queue_name=queue,
    )
    tokenizer = engine.tokenizer_json()
    if tokenizer is not None:
        await pool.set(tokenizer_key(served.name), tokenizer)
    worker_id = uuid.uuid4().hex[:12]
    deps = JobDeps(engine=engine, worker_id=worker_id, publisher=EventPublisher(pool, settings.stream_ttl))
    worker = build_worker(settings, deps, queue, pool)
    info = WorkerInfo(
        id=worker_id,
        model=served.name,
        engine=engine.name,
        queue=queue,
        slots=settings.worker_concurrency,
        started_at=time.time(),
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    serve_metrics(settings.host, settings.worker_metrics_port)
    beating = asyncio.create_task(heartbeat(pool, info, settings.heartbeat_ttl))
    running = asyncio.create_task(worker.async_run())
    log.info("worker %s serving %s on queue %s (%d slots)", worker_id, served.name, queue, info.slots)
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)

    # Stop taking jobs, let in-flight ones finish, then hand back what is left (arq re-queues it).
    worker.allow_pick_jobs = False
    in_flight = [t for t in worker.tasks.values() if not t.done()]
    if in_flight:
        log.info("draining %d in-flight jobs (up to %.0fs)", len(in_flight), SHUTDOWN_GRACE)
        await asyncio.wait(in_flight, timeout=SHUTDOWN_GRACE)
    beating.cancel()
    stopping.cancel()
    await deregister(pool, worker_id)
    await worker.close()  # cancels what is left and closes the pool
    with contextlib.suppress(asyncio.CancelledError):
        await running
    await engine.close()
    log.info("worker %s stopped", worker_id)
