"""A client that leaves mid-stream stops its generation: the engine does not work for nobody."""

from __future__ import annotations

import asyncio
import time

import httpx
from arq.constants import abort_jobs_ss
from redis.asyncio import Redis

from sluice.contract import Done, decode_event, events_key, queue_key
from tests.conftest import MODEL, Stack, hang_up_after_first_frame, until_job_ends


async def test_disconnect_aborts_the_job(stack: Stack) -> None:
    body = {"prompt": "Write a very long story about a dragon.", "stream": True, "max_tokens": 4000}
    request_id = await hang_up_after_first_frame(stack.native_url, body)  # one token seen
    # The abort ends it long before 4,000 tokens (~2 min).
    await until_job_ends(stack.redis_url, request_id, within=15)
    redis = Redis.from_url(stack.redis_url)
    try:
        entries = await redis.xrange(events_key(request_id))
        events = [decode_event(fields[b"e"]) for _, fields in entries]
        assert not any(isinstance(e, Done) for e in events)
        generated = sum(getattr(e, "tokens", 0) for e in events)
        assert generated < 4000
    finally:
        await redis.aclose()


async def test_a_streaming_client_that_leaves_while_its_job_waits_aborts_it(lone_gateway: Stack) -> None:
    """Nobody takes the job (no worker): its client hangs up before any token, and the job is
    aborted then, not when a worker would have run it for nobody."""
    body = {"prompt": "Tell me about the sea.", "stream": True, "max_tokens": 64}
    redis = Redis.from_url(lone_gateway.redis_url)
    queue = queue_key(MODEL)
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            request = asyncio.create_task(client.post(lone_gateway.native_url, json=body))
            deadline = time.monotonic() + 15
            while not (queued := await redis.zrange(queue, 0, -1)):
                assert time.monotonic() < deadline, "the job was never queued"
                await asyncio.sleep(0.02)
            request.cancel()
        (job_id,) = queued
        deadline = time.monotonic() + 15
        while await redis.zscore(abort_jobs_ss, job_id) is None:
            assert time.monotonic() < deadline, "the job stayed queued after its client left"
            await asyncio.sleep(0.05)
    finally:
        await redis.delete(queue)
        await redis.aclose()


async def test_a_non_streaming_client_that_leaves_aborts_its_job(stack: Stack) -> None:
    body = {"prompt": "Write a very long story about a dragon.", "max_tokens": 4000}
    redis = Redis.from_url(stack.redis_url)
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            request = asyncio.create_task(client.post(stack.native_url, json=body))
            # The job is running once arq marks it in progress; then the client hangs up.
            deadline = time.monotonic() + 15
            while not (running := await redis.keys("arq:in-progress:*")):
                assert time.monotonic() < deadline, "the job never started"
                await asyncio.sleep(0.02)
            request.cancel()
        (key,) = running
        deadline = time.monotonic() + 15
        while await redis.exists(key):
            assert time.monotonic() < deadline, "the job kept running after its client left"
            await asyncio.sleep(0.05)
        job_id = key.decode().removeprefix("arq:in-progress:")
        events = [decode_event(fields[b"e"]) for _, fields in await redis.xrange(events_key(job_id))]
        assert not any(isinstance(e, Done) for e in events)
    finally:
        await redis.aclose()
