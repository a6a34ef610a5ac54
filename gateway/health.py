"""Liveness and readiness, as Kubernetes probes them."""

from __future__ import annotations

import asyncio

import msgspec
from arq.connections import ArqRedis
from litestar import Controller, Response, get
from litestar.di import NamedDependency
from redis.exceptions import RedisError

from sluice.config import Settings
from sluice.registry import live_workers


class Health(msgspec.Struct, omit_defaults=True):
    status: str
    redis: bool | None = None
    workers: int | None = None


class HealthController(Controller):
    tags = ("Health",)

    @get("/healthz", summary="The process is up")
    async def healthz(self) -> Health:
        return Health(status="ok")

    # Ready means this gateway can take requests: Redis answers. Live workers are reported, not
    # required: with none (all still loading their model, say) requests queue or get Sluice's own
    # errors, which beats every gateway leaving its Service and clients being refused a connection.
    @get("/readyz", summary="Redis answers (the body counts the live workers)")
    async def readyz(
        self, redis: NamedDependency[ArqRedis], settings: NamedDependency[Settings]
    ) -> Response[Health]:
        try:
            async with asyncio.timeout(1.0):  # a probe that hangs is as bad as a red one
                await redis.ping()
                workers = await live_workers(redis, settings.heartbeat_ttl)
        except (RedisError, OSError, TimeoutError):
            return Response(Health(status="unavailable", redis=False, workers=0), status_code=503)
        return Response(Health(status="ok" if workers else "no workers", redis=True, workers=workers))
