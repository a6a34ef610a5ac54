"""Workers start jobs when they are queued, not when they next poll: enqueues, aborts and freed
slots wake them over Redis pub/sub. Here the fallback poll is an hour, so every job that starts,
and every abort that lands, proves its wake arrived; and an idle worker leaves Redis alone."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import httpx
import pytest
from arq.connections import RedisSettings, create_pool
from arq.constants import job_key_prefix, retry_key_prefix
from redis.asyncio import Redis

from gateway.enqueue import JobQueue
from sluice.contract import (
    EVENT_FIELD,
    Failed,
    GenerationInput,
    Job,
    decode_event,
    deserialize_arq_job,
    events_key,
    serialize_arq_job,
)
from sluice.ids import new_id
from sluice.redis_server import EmbeddedRedis
from tests.conftest import MODEL, Stack, hang_up_after_first_frame, run_stack, until_job_ends

SLOTS = 2


@pytest.fixture(scope="module")
def woken(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A synthetic stack on a Redis of its own (its command counts are this stack's alone)."""
    models = [{"name": MODEL, "engine": "synthetic", "model": "synthetic"}]
    with EmbeddedRedis() as redis:
        yield from run_stack(
            redis.url,
            tmp_path_factory.mktemp("pickup-logs"),
            models=json.dumps(models),
            synthetic_tokens_per_second="100",
            worker_concurrency=str(SLOTS),
            poll_delay="3600",
        )


async def test_queued_jobs_start_at_once_and_waiting_ones_when_a_slot_frees(woken: Stack) -> None:
    body = {"prompt": "Hi", "max_tokens": 8}
    async with httpx.AsyncClient(timeout=30) as client, asyncio.timeout(30):
        # Four times the slots: half of these wait in the queue for a slot to free.
        replies = await asyncio.gather(*(client.post(woken.native_url, json=body) for _ in range(4 * SLOTS)))
    assert [r.status_code for r in replies] == [200] * (4 * SLOTS)
    assert all(r.json()["result"]["usage"]["completion_tokens"] == 8 for r in replies)


async def test_an_abort_stops_the_job_at_once(woken: Stack) -> None:
    body = {"prompt": "Hi", "stream": True, "max_tokens": 4000}  # 40 s at 100 tok/s
    request_id = await hang_up_after_first_frame(woken.native_url, body)
    # Long before its 40 s only if the abort woke the worker (its fallback poll is an hour away).
    await until_job_ends(woken.redis_url, request_id, within=15)


async def test_a_job_leaves_nothing_behind_but_its_stream(woken: Stack) -> None:
    """Whether it completes or is aborted, a job's end clears arq's keys and its worker's record
    of it (what recovery would re-run), in one transaction; only its event stream stays, to
    expire."""
    redis = Redis.from_url(woken.redis_url)

    async def recorded() -> set[bytes]:
        keys = [key async for key in redis.scan_iter("sluice:running:*")]
        return {job for key in keys async for job in redis.sscan_iter(key)}

    body = {"prompt": "Hi", "stream": True, "max_tokens": 4000}
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            reply = await client.post(woken.native_url, json={"prompt": "Hi", "max_tokens": 8})
            async with client.stream("POST", woken.native_url, json=body) as response:
                aborted = response.headers["cf-ai-req-id"]
                # Held: a line iterator left for the collector closes the connection, and the
                # gateway aborts the job, perhaps before it is looked for below.
                lines = response.aiter_lines()
                async for line in lines:
                    if line.startswith("data: "):
                        break
                assert aborted.encode() in await recorded(), "a running job is not recorded as its worker's"
        completed = reply.headers["cf-ai-req-id"]
        for job_id in (completed, aborted):
            await until_job_ends(woken.redis_url, job_id)
            left = [key async for key in redis.scan_iter(f"*{job_id}*")]
            assert left == [events_key(job_id).encode()], left
        assert not {completed.encode(), aborted.encode()} & await recorded()
    finally:
        await redis.aclose()


async def test_an_idle_worker_does_not_poll_redis(woken: Stack) -> None:
    redis = Redis.from_url(woken.redis_url)
    try:
        await redis.config_resetstat()
        started = time.monotonic()
        await asyncio.sleep(2.0)  # a window of idleness to count commands over, not a wait
        stats = await redis.info("commandstats")
        per_second = sum(int(v["calls"]) for v in stats.values()) / (time.monotonic() - started)
    finally:
        await redis.aclose()
    # Polling every 2 ms, as before, was over a thousand commands a second from the worker alone.
    assert per_second < 50, stats


async def test_a_job_out_of_tries_ends_in_an_error_not_at_its_deadline(woken: Stack) -> None:
    """A job whose worker stopped on each of its tries (a request that kills workers, say) is not
    started again, and its stream says so at once instead of leaving its client to wait."""
    redis = await create_pool(
        RedisSettings.from_dsn(woken.redis_url),
        job_serializer=serialize_arq_job,
        job_deserializer=deserialize_arq_job,
    )
    job = Job(id=new_id(), model=MODEL, input=GenerationInput(prompt="Hi", max_tokens=8))
    try:
        await redis.set(retry_key_prefix + job.id, 5)  # arq's default limit, all used
        await JobQueue(redis).submit(job, account="acct", cost=9)
        reply = await redis.xread({events_key(job.id): "0-0"}, block=15_000)
        assert reply, "nothing was said of the job"
        (_key, [(_id, fields)]) = reply[0]
        event = decode_event(fields[EVENT_FIELD])
        assert isinstance(event, Failed)
        assert (event.status, event.retryable) == (500, False)
        assert "started 5 times" in event.message
        assert not await redis.exists(job_key_prefix + job.id), "the job was ended, not left queued"
    finally:
        await redis.aclose()
