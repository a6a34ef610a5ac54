"""The worker process: load the engine, then take jobs from the model's arq queue.

arq picks jobs; Sluice tunes it for token streaming: polls woken by each job queued (not every
0.5 s), many jobs at once (the engine batches them), aborts enabled so a client that leaves
stops its generation, and no results kept (results travel on the job's event stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import time
import uuid
from collections.abc import Awaitable
from typing import NoReturn

import msgspec
from arq import Worker
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.worker import func
from redis.exceptions import RedisError

from sluice.config import Settings
from sluice.contract import (
    ABORTS_CHANNEL,
    GENERATE,
    WorkerInfo,
    deserialize_arq_job,
    direct_queue_key,
    queue_key,
    serialize_arq_job,
    tokenizer_key,
)
from sluice.fairqueue import Claims, FairQueue
from sluice.multiplex import Multiplexed
from sluice.recovery import Recovery, leave
from sluice.registry import heartbeat, stop_accepting
from worker import metrics
from worker.doorbell import Doorbell
from worker.engines import create_engine
from worker.engines.base import Engine, EngineFailed
from worker.inflight import InFlight
from worker.job import JobDeps, generate, give_up
from worker.metrics import serve_metrics
from worker.publish import EventPublisher
from worker.slots import Slots, SlottedWorker

log = logging.getLogger("sluice.worker")
#: Seconds a claim, an append or a job's end waits for Redis's reply; past it the connection is
#: taken for half-open and replaced (each of them is safe to ask again: ``sluice/fairqueue.py``).
HOT_TIMEOUT = 5.0


def build_worker(
    settings: Settings,
    deps: JobDeps,
    queue: str,
    pool: ArqRedis,
    slots: Slots,
    bell: Doorbell,
    claims: Claims,
) -> Worker:
    return SlottedWorker(
        functions=[func(generate, name=GENERATE, timeout=settings.job_timeout)],
        queue_name=queue,
        redis_pool=pool,
        max_jobs=slots.slots,
        slots=slots,
        bell=bell,
        claims=claims,
        out_of_tries=functools.partial(give_up, deps),
        poll_delay=settings.poll_delay,
        allow_abort_jobs=True,
        keep_result=0,
        job_timeout=settings.job_timeout,
        handle_signals=False,
        ctx={"sluice": deps},
        job_serializer=serialize_arq_job,
        job_deserializer=deserialize_arq_job,
    )


async def _unless_stopped(work: Awaitable[None], stop: asyncio.Event) -> bool:
    """Run ``work``; ``False`` if ``stop`` was set first (``work`` is then cancelled)."""
    task = asyncio.ensure_future(work)
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if task.done():
        task.result()  # raises what the work raised
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False


async def serve(settings: Settings) -> int:
    """Run a worker until SIGTERM/SIGINT (exit status 0) or until its engine fails (1)."""
    served = settings.worker_served()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # before the engine loads: it may take minutes
        loop.add_signal_handler(sig, stop.set)
    engine = create_engine(served, settings, settings.worker_concurrency)
    try:
        started = time.monotonic()
        if not await _unless_stopped(engine.start(), stop):
            log.info("stopped while %s was loading", served.model)
            return 0
        log.info("engine %s ready with %s in %.1fs", engine.name, served.model, time.monotonic() - started)
        return await _take_jobs(settings, engine, stop)
    except EngineFailed as exc:
        log.error("engine %s failed: %s", engine.name, exc)
        return 1
    finally:
        await engine.close()


async def _take_jobs(settings: Settings, engine: Engine, stop: asyncio.Event) -> int:
    served = engine.served
    queue = queue_key(served.name)
    concurrency = settings.worker_concurrency or engine.default_concurrency
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
    inflight = InFlight(pool, settings.heartbeat_ttl)
    # The commands on each job's path, the claims and the event appends: one connection, no
    # per-command checkout (sluice/multiplex.py).
    hot = Multiplexed(pool.connection_pool, timeout=HOT_TIMEOUT)
    publisher = EventPublisher(hot, settings.stream_ttl, interval=settings.publish_interval_ms / 1000)
    deps = JobDeps(
        engine=engine,
        worker_id=worker_id,
        publisher=publisher,
        inflight=inflight,
        adapters=settings.adapters_path(),
    )
    # The shared queue, and this worker's own (jobs routed here): one budget of slots for both.
    slots = Slots(concurrency)
    direct_pool = await create_pool(
        RedisSettings.from_dsn(settings.redis_url),
        job_serializer=serialize_arq_job,
        job_deserializer=deserialize_arq_job,
        default_queue_name=direct_queue_key(queue, worker_id),
    )
    bell = Doorbell(ABORTS_CHANNEL)
    claims = Claims(hot, worker_id)  # both queues': their claims are numbered by queue
    direct = direct_queue_key(queue, worker_id)
    workers = [
        build_worker(settings, deps, queue, pool, slots, bell, claims),
        build_worker(settings, deps, direct, direct_pool, slots, bell, claims),
    ]
    info = WorkerInfo(
        id=worker_id,
        model=served.name,
        engine=engine.name,
        queue=queue,
        slots=concurrency,
        started_at=time.time(),
    )

    serve_metrics(settings.host, settings.worker_metrics_port)
    advert = info

    def advertise() -> WorkerInfo:
        return msgspec.structs.replace(advert, running=slots.running, adapters=engine.loaded_adapters())

    beating = asyncio.create_task(heartbeat(pool, advertise, settings.heartbeat_ttl))
    recovery = Recovery(
        pool,
        [queue],
        heartbeat_ttl=settings.heartbeat_ttl,
        stream_ttl=settings.stream_ttl,
        job_timeout=settings.job_timeout,
        observe=lambda action: metrics.RECOVERED.labels(action).inc(),
    )
    background = [
        asyncio.create_task(recovery.run()),
        asyncio.create_task(inflight.watch()),
        asyncio.create_task(bell.listen(pool)),
    ]
    polling = [asyncio.create_task(_poll_queue(worker)) for worker in workers]
    log.info("worker %s serving %s on queue %s (%d slots)", worker_id, served.name, queue, concurrency)
    stopping = asyncio.create_task(stop.wait())
    failing = asyncio.create_task(engine.until_failed())
    await asyncio.wait({*polling, stopping, failing, beating}, return_when=asyncio.FIRST_COMPLETED)
    if beating.done():
        _evicted(beating)
    if failing.done():
        log.error("worker %s stops taking jobs: its engine failed: %s", worker_id, failing.result())

    # Stop taking jobs, let in-flight ones finish, then hand back what is left (arq re-queues it).
    # Heartbeats go on meanwhile (as draining: no free slots), so recovery still sees this worker
    # alive and its jobs as its own; it leaves the registry only once it holds no job.
    for worker in workers:
        worker.allow_pick_jobs = False
    advert = msgspec.structs.replace(info, draining=True)
    with contextlib.suppress(RedisError, OSError):
        # No job is routed here from now on (the gateways' enqueue checks, atomically); those
        # already routed but not started go to the shared queue, where others take them.
        await stop_accepting(pool, worker_id)
        await FairQueue(pool).hand_back(queue, worker_id)
    in_flight = [t for worker in workers for t in worker.tasks.values() if not t.done()]
    if in_flight:
        log.info("draining %d in-flight jobs (up to %.0fs)", len(in_flight), settings.shutdown_grace)
        await asyncio.wait(in_flight, timeout=settings.shutdown_grace)
    for task in (stopping, failing, *background):
        task.cancel()
    leftover = [t for worker in workers for t in worker.tasks.values() if not t.done()]
    for task in leftover:
        task.cancel()  # each stays queued, to run again with its try counted (SlottedWorker._run)
    await asyncio.gather(*leftover, return_exceptions=True)  # their ends may ride out a blip
    beating.cancel()
    with contextlib.suppress(RedisError, OSError):
        await leave(pool, worker_id, queue, settings.stream_ttl)  # the handed-back routed ones too
    for worker in workers:
        await worker.close()  # closes its pool
    await hot.aclose()
    for task in polling:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    log.info("worker %s stopped", worker_id)
    return 1 if failing.done() and not failing.cancelled() else 0


async def _poll_queue(worker: Worker) -> None:
    """arq's polling loop, restarted when Redis goes away, so service resumes when it returns."""
    while True:
        try:
            await worker.async_run()
            return
        except (RedisError, OSError) as exc:
            log.warning("queue unreachable, polling again in 1s: %s", exc)
            await asyncio.sleep(1.0)


def _evicted(beating: asyncio.Task[None]) -> NoReturn:
    """Recovery gave this worker's jobs to others while it was stalled: running on would answer
    them twice. Exit at once (an SGLang child dies with its parent) and let the supervisor restart."""
    log.critical("%s; exiting now", beating.exception() or "heartbeat stopped")
    logging.shutdown()
    os._exit(1)
