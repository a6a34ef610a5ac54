"""The Litestar application: routers, dependencies and the Redis-backed services' lifespan."""

from __future__ import annotations

import asyncio
import gc
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from arq.connections import ArqRedis
from litestar import Litestar, Router
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from redis.asyncio import BlockingConnectionPool
from redis.exceptions import RedisError

from gateway import metrics
from gateway.auth import Authenticator, authenticate
from gateway.caller import caller_of, quota_headers
from gateway.enqueue import JobQueue
from gateway.errors import render
from gateway.finetunes.router import FinetuneAssetsController, FinetunesController
from gateway.generation import REDIS_TIMEOUT, Generations
from gateway.health import HealthController
from gateway.inputs import header_limit
from gateway.metrics import MetricsController, track_requests
from gateway.native.router import NativeController
from gateway.openai import CONTROLLERS as OPENAI
from gateway.ratelimit import EffectiveLimits, RateLimiter
from gateway.relay import StreamRelay
from gateway.routing import JobRouter
from gateway.tokens import PromptCounter
from sluice import __version__
from sluice.adapters import AdapterStore
from sluice.config import Settings
from sluice.contract import deserialize_arq_job, inbox_key, queue_key, serialize_arq_job
from sluice.keys import KeyStore, load_file
from sluice.multiplex import Multiplexed
from sluice.recovery import Recovery
from sluice.registry import gateway_presence

log = logging.getLogger("sluice.gateway")


async def _announce_access(settings: Settings, keys: KeyStore) -> None:
    """Say loudly, once, when the API is open to anyone, or closed to everyone."""
    if settings.auth == "open":
        log.warning("*** OPEN: API requests need no key and nothing is rate-limited (SLUICE_AUTH=open) ***")
        return
    try:
        if not await keys.all():
            log.warning("no API keys exist: every API request gets 401 until `sluice keys create` adds one")
    except (RedisError, OSError):
        pass  # Redis away at start-up: requests will say so


def observe_recovery(action: str) -> None:
    metrics.RECOVERED.labels(action).inc()


#: The gateway's Redis connections (the relay has one more of its own).
MAX_CONNECTIONS = 64


def connect(redis_url: str) -> ArqRedis:
    """The gateway's Redis client, over a bounded pool whose callers wait for a free connection.
    Unbounded (redis-py's default), a burst of requests opens a connection each: 512 streams
    starting at once spent longer connecting than the 3 s a request waits on Redis, and most
    were refused as if Redis were down. Redis need not be up yet: requests say so until it is."""
    pool = BlockingConnectionPool.from_url(redis_url, max_connections=MAX_CONNECTIONS, timeout=None)
    return ArqRedis(pool, job_serializer=serialize_arq_job, job_deserializer=deserialize_arq_job)


def create_app(settings: Settings) -> Litestar:
    assert settings.redis_url is not None, "the gateway needs REDIS_URL"
    redis_url = settings.redis_url

    @asynccontextmanager
    async def services(app: Litestar) -> AsyncIterator[None]:
        # First, before anything is started that would need stopping: a bad keys file stops here.
        file_keys = load_file(settings.keys_file) if settings.keys_file else None
        redis = connect(redis_url)
        enqueues = Multiplexed(redis.connection_pool)  # each request's one command on its way in
        # This process's presence tells workers its jobs still have a reader; the recovery sweep
        # ends or re-runs the jobs of killed workers even when no other worker is left to do it.
        # Its jobs carry its id, and their first events come to its relay's inbox by it.
        gateway_id = uuid.uuid4().hex[:12]
        relay = StreamRelay(
            redis_url,
            control=redis,
            inbox=inbox_key(gateway_id),
            coalesce_above=settings.coalesce_above,
            coalesce_ms=settings.coalesce_ms,
        )
        await relay.start()
        ttl = settings.heartbeat_ttl
        background = [
            asyncio.create_task(gateway_presence(redis, gateway_id, ttl)),
            asyncio.create_task(
                Recovery(
                    redis,
                    [queue_key(served.name) for served in settings.models],
                    heartbeat_ttl=ttl,
                    stream_ttl=settings.stream_ttl,
                    job_timeout=settings.job_timeout,
                    observe=observe_recovery,
                ).run()
            ),
        ]
        app.state.redis = redis
        keys = KeyStore(redis, file_keys)
        app.state.authenticator = Authenticator(keys, open_access=settings.auth == "open")
        await _announce_access(settings, keys)
        defaults = EffectiveLimits(settings.default_rpm, settings.default_tpm, settings.default_concurrency)
        # A request's concurrent slot lapses as its gateway's presence does, unless renewed.
        limiter = RateLimiter(redis, defaults, lease_seconds=3 * ttl)
        background.append(asyncio.create_task(limiter.keep_leases(every=ttl)))
        counter = PromptCounter(redis, REDIS_TIMEOUT)
        adapters = AdapterStore.of(redis, settings)
        app.state.adapters = adapters
        router = JobRouter(redis, settings.heartbeat_ttl)
        generations = Generations(
            settings, JobQueue(redis, enqueues), relay, counter, gateway_id, limiter, adapters, router
        )
        app.state.generations = generations
        # Start-up objects never die: keep them out of every collection (cuts the relay's p99).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await generations.settle()  # token reservations handed back, aborts sent
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await relay.close()
            await enqueues.aclose()
            await redis.aclose()

    def provide_redis(state: State) -> ArqRedis:
        redis: ArqRedis = state.redis
        return redis

    def provide_generations(state: State) -> Generations:
        generations: Generations = state.generations
        return generations

    def provide_adapters(state: State) -> AdapterStore:
        adapters: AdapterStore = state.adapters
        return adapters

    def provide_settings() -> Settings:
        return settings

    return Litestar(
        route_handlers=[
            HealthController,
            MetricsController,
            NativeController,  # authenticates itself: every API route needs a key unless open
            FinetunesController,
            # Adapter files are far larger than requests: their own limit (plus the form's framing).
            Router(
                "/",
                route_handlers=[FinetuneAssetsController],
                request_max_body_size=settings.max_adapter_bytes + 65_536,
            ),
            Router("/v1", route_handlers=OPENAI, middleware=[authenticate]),
            Router(
                "/client/v4/accounts/{account_id:str}/ai/v1", route_handlers=OPENAI, middleware=[authenticate]
            ),
        ],
        dependencies={
            "settings": Provide(provide_settings, sync_to_thread=False),
            "redis": Provide(provide_redis, sync_to_thread=False),
            "generations": Provide(provide_generations, sync_to_thread=False),
            "adapters": Provide(provide_adapters, sync_to_thread=False),
            "caller": Provide(caller_of, sync_to_thread=False),
        },
        lifespan=[services],
        exception_handlers={Exception: render},
        # Logging is set up once by the process (sluice.cli): JSON lines, not Litestar's format.
        logging_config=None,
        middleware=[track_requests, header_limit, quota_headers],
        openapi_config=OpenAPIConfig(title="Sluice", version=__version__, path="/docs"),
        request_max_body_size=settings.max_body_bytes,
    )
