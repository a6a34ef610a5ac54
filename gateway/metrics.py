"""The gateway's Prometheus metrics, measured where the user feels them.

Queue wait, time to first token and inter-token latency are observed here, not in an engine:
only the gateway sees a request's whole path. Labels are bounded: API, route template, served
model name, status code, reason; never a key, account, request or adapter id. With several
server processes set ``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess mode) and
every process's samples are summed at scrape time.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any

from arq.connections import ArqRedis
from litestar import Controller, Request, get
from litestar.di import NamedDependency
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from redis.asyncio import Redis
from redis.exceptions import RedisError

from sluice.config import Settings
from sluice.contract import WORKERS_KEY, decode_worker, direct_queue_key, queue_key, worker_key
from sluice.fairqueue import FairQueue
from sluice.ids import new_id

#: Milliseconds matter for queue wait, first token and the gaps between tokens.
FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Seconds to minutes for a whole request.
SLOW_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

REQUESTS = Counter("sluice_requests", "HTTP requests answered", ["api", "route", "model", "status"])
REQUEST_SECONDS = Histogram(
    "sluice_request_duration_seconds",
    "Time to the last byte of a response",
    ["api", "route"],
    buckets=SLOW_BUCKETS,
)
IN_FLIGHT = Gauge(
    "sluice_in_flight_requests", "Requests being answered", ["api"], multiprocess_mode="livesum"
)
QUEUE_WAIT = Histogram(
    "sluice_queue_wait_seconds", "Enqueue to a worker starting the job", ["model"], buckets=FAST_BUCKETS
)
FIRST_TOKEN = Histogram(
    "sluice_time_to_first_token_seconds", "Enqueue to the first output", ["model"], buckets=FAST_BUCKETS
)
INTER_TOKEN = Histogram(
    "sluice_inter_token_seconds",
    "Gap between consecutive outputs of a stream",
    ["model"],
    buckets=FAST_BUCKETS,
)
GENERATION_SECONDS = Histogram(
    "sluice_generation_duration_seconds", "Enqueue to the last token", ["model"], buckets=SLOW_BUCKETS
)
TOKENS = Counter("sluice_tokens", "Tokens of finished generations", ["model", "kind"])
REJECTIONS = Counter("sluice_rejections", "Requests refused before queueing", ["reason"])
ABORTS = Counter("sluice_aborts", "Generations ended before their answer", ["cause"])
RECOVERED = Counter(
    "sluice_recovered_jobs",
    "Jobs of killed workers taken over: requeued (run again) or failed (half-sent streams)",
    ["action"],
)


def api_of(path: str) -> str:
    if path.startswith("/v1/") or "/ai/v1/" in path:
        return "openai"
    if "/ai/run/" in path:
        return "workers_ai"
    return "other"


async def _queue_gauges(redis: Redis, heartbeat_ttl: float, queues: Sequence[str]) -> CollectorRegistry:
    """Queue depth, oldest job age, live workers and their slots, read from Redis at scrape time;
    ``sluice_redis_up`` says whether Redis answered (the scrape itself succeeds either way)."""
    registry = CollectorRegistry()
    redis_up = Gauge("sluice_redis_up", "Whether Redis answered this scrape", registry=registry)
    queue_gauges = _QueueGauges(registry)
    try:
        await queue_gauges.read(redis, heartbeat_ttl, queues)
    except (RedisError, OSError):
        return registry
    redis_up.set(1)
    return registry


class _QueueGauges:
    def __init__(self, registry: CollectorRegistry) -> None:
        def gauge(name: str, help_text: str) -> Gauge:
            return Gauge(name, help_text, ["queue"], registry=registry)

        # A model's jobs wait on its queue and on its workers' own (those routed to one worker):
        # an autoscaler reading only the first would not see a backlog of LoRA or session jobs.
        self.depth = gauge("sluice_queue_depth", "Jobs waiting, on the queue or routed to one of its workers")
        self.oldest = gauge("sluice_queue_oldest_job_age_seconds", "Age of the oldest waiting job")
        self.workers = gauge("sluice_live_workers", "Workers with a fresh heartbeat")
        self.slots = gauge("sluice_worker_slots", "Jobs the live workers can run at once")

    async def read(self, redis: Redis, heartbeat_ttl: float, served: Sequence[str]) -> None:
        now = time.time()
        ids = await redis.zrangebyscore(WORKERS_KEY, int((now - heartbeat_ttl) * 1000), "+inf")
        # A served model's queue is reported with no worker too: its depth is what an autoscaler
        # needs to start the first one.
        queues: dict[str, list[str]] = {queue: [queue] for queue in served}  # -> where its jobs wait
        for queue in queues:
            self.workers.labels(queue)
            self.slots.labels(queue)
        for raw in await redis.mget([worker_key(i.decode()) for i in ids]) if ids else []:
            if raw is None:
                continue
            info = decode_worker(raw)
            queues.setdefault(info.queue, [info.queue]).append(direct_queue_key(info.queue, info.id))
            self.workers.labels(info.queue).inc()
            if not info.draining:  # a stopping worker's slots take no new job
                self.slots.labels(info.queue).inc(info.slots)
        fair = FairQueue(redis)
        for queue, holding in sorted(queues.items()):
            # Not the running jobs arq keeps in its queues.
            backlogs = [await fair.backlog(key) for key in holding]
            self.depth.labels(queue).set(sum(b.waiting for b in backlogs))
            self.oldest.labels(queue).set(max(b.oldest_wait for b in backlogs))


async def exposition(redis: Redis, heartbeat_ttl: float, queues: Sequence[str] = ()) -> bytes:
    """The ``/metrics`` body: this process's metrics (or all processes', in multiprocess mode)
    and the gauges of ``queues`` and of every queue a live worker serves."""

    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        own = generate_latest(registry)
    else:
        own = generate_latest()
    return own + generate_latest(await _queue_gauges(redis, heartbeat_ttl, queues))


def track_requests(app: ASGIApp) -> ASGIApp:
    """ASGI middleware: every answered request counted and timed, by API, route and status."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        api = api_of(scope["path"])
        status = 500
        start = time.perf_counter()
        request_id = new_id()  # time-ordered: a queued job's wait is read off it
        scope.setdefault("state", {})[REQUEST_ID_STATE] = request_id

        async def observe(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # Every response carries its id; the job, its stream and its log lines share it.
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        IN_FLIGHT.labels(api).inc()
        try:
            await app(scope, receive, observe)
        finally:
            IN_FLIGHT.labels(api).dec()
            route = scope.get("path_template") or "unmatched"
            model = str(scope.get("state", {}).get(MODEL_STATE, ""))
            seconds = time.perf_counter() - start
            REQUESTS.labels(api, route, model, str(status)).inc()
            REQUEST_SECONDS.labels(api, route).observe(seconds)
            access_log.info(
                "request",
                extra={
                    "request_id": request_id,
                    "method": scope.get("method", ""),
                    "path": scope["path"],
                    "route": route,
                    "api": api,
                    "model": model,
                    "status": status,
                    "duration_ms": round(seconds * 1000, 2),
                },
            )

    return middleware


#: Where a handler leaves the served model's name for the request counter.
MODEL_STATE = "sluice_model"
#: Where the middleware leaves the request's id for the handlers (it becomes the job's id).
REQUEST_ID_STATE = "sluice_request_id"
access_log = logging.getLogger("sluice.gateway.access")


def request_id_of(request: Request[Any, Any, Any]) -> str:
    return str(request.scope.get("state", {}).get(REQUEST_ID_STATE) or new_id())


def label_model(request: Request[Any, Any, Any], model: str) -> None:
    """Name the served model in this request's counter (a configured name: bounded)."""
    request.scope.setdefault("state", {})[MODEL_STATE] = model


class MetricsController(Controller):
    tags = ("Operations",)

    @get("/metrics", summary="Prometheus metrics", media_type="text/plain; version=0.0.4; charset=utf-8")
    async def metrics(self, redis: NamedDependency[ArqRedis], settings: NamedDependency[Settings]) -> bytes:
        return await exposition(redis, settings.heartbeat_ttl, [queue_key(m.name) for m in settings.models])
