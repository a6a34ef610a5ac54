"""One worker's two queues (the model's and its own) share its slots: never more jobs run at
once than it has, even when a claim's reply is lost and the claim is asked again later."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from arq.connections import RedisSettings, create_pool
from arq.jobs import serialize_job
from arq.worker import func
from redis.asyncio import Redis
from redis.exceptions import RedisError

from sluice.contract import accepting_key, direct_queue_key
from sluice.fairqueue import Claims, FairQueue
from sluice.ids import new_id
from sluice.multiplex import Multiplexed
from sluice.redis_server import EmbeddedRedis
from sluice.registry import deregister
from tests.conftest import SCRATCH_DB
from tests.faults import LosesOneReply
from worker.doorbell import Doorbell
from worker.slots import Slots, SlottedWorker

QUEUE = "sluice:queue:slots-test"
WORKER = "slots-test-worker"
DIRECT = direct_queue_key(QUEUE, WORKER)


async def enqueue(fair: FairQueue, *, routed: bool) -> str:
    job_id = new_id()
    data = serialize_job("hold", (), {}, None, 0)
    worker = WORKER if routed else None
    now_ms = int(time.time() * 1000)
    await fair.enqueue(
        QUEUE,
        job_id,
        f"arq:job:{job_id}",
        data,
        worker=worker,
        expires_ms=60_000,
        account="a",
        cost=1,
        now_ms=now_ms,
    )
    return job_id


async def test_a_claim_whose_reply_was_lost_keeps_its_slots_until_it_is_answered(
    redis_server: EmbeddedRedis, scratch_redis: Redis
) -> None:
    url = redis_server.url.rsplit("/", 1)[0] + f"/{SCRATCH_DB}"
    release = asyncio.Event()

    async def hold(ctx: dict[str, Any]) -> None:
        await release.wait()

    await scratch_redis.set(accepting_key(WORKER), b"1")
    fair = FairQueue(scratch_redis)
    await enqueue(fair, routed=False)
    routed = [await enqueue(fair, routed=True) for _ in range(2)]
    pool = await create_pool(RedisSettings.from_dsn(url))
    slots, bell = Slots(2), Doorbell("sluice:test:aborts")
    direct = Multiplexed.from_url(url)

    def slotted(queue: str, claims: Claims) -> SlottedWorker:
        async def out_of_tries(job_id: str, tries: int) -> None:
            raise AssertionError(f"{job_id} ran out of tries")

        return SlottedWorker(
            functions=[func(hold, name="hold")],
            queue_name=queue,
            redis_pool=pool,
            slots=slots,
            bell=bell,
            claims=claims,
            out_of_tries=out_of_tries,
            keep_result=0,
            handle_signals=False,
        )

    async with LosesOneReply(redis_server, marker=QUEUE.encode()) as proxy:
        through = Multiplexed.from_url(f"{proxy.url}/{SCRATCH_DB}")
        claims = Claims(through, WORKER)
        await claims.take("sluice:queue:warm-up", 1, mark_ms=60_000)  # the script loaded: it runs
        shared, own = slotted(QUEUE, claims), slotted(DIRECT, Claims(direct, WORKER))
        with pytest.raises(RedisError):
            await shared._poll_iteration()  # it took the shared job; the reply is lost
        assert proxy.lost == 1
        await own._poll_iteration()
        assert not own.tasks, "the slots stay held for the lost claim: it may have taken them"
        await shared._poll_iteration()  # asked again: answered what it took
        await own._poll_iteration()  # woken by the slots the answer freed
        assert (shared.job_counter, own.job_counter) == (1, 1), "never more than the 2 slots"
        assert set(own.tasks) < set(routed)
        release.set()
        await asyncio.gather(*shared.tasks.values(), *own.tasks.values())
        await through.aclose()
    await direct.aclose()
    await pool.aclose()
    await deregister(scratch_redis, WORKER)
