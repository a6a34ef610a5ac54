"""Fair-share order on a real Redis: one account's flood does not hold back another's jobs, and
the backlog an account is measured against is what waits ahead of its own next job."""

from __future__ import annotations

import asyncio
import time

import pytest
from arq.constants import abort_jobs_ss, in_progress_key_prefix, job_key_prefix, retry_key_prefix
from redis.asyncio import Redis
from redis.exceptions import RedisError

from sluice.contract import accepting_key, claim_receipts_key, direct_queue_key, pickup_channel, running_key
from sluice.fairqueue import Backlog, Claims, FairQueue, QueueLimits
from sluice.ids import new_id
from sluice.multiplex import Multiplexed
from sluice.redis_server import EmbeddedRedis
from sluice.registry import deregister
from tests.conftest import SCRATCH_DB
from tests.faults import LosesOneReply

QUEUE = "sluice:queue:fair-test"
WORKER = "fair-test-worker"
RUNNING = running_key(WORKER)


@pytest.fixture
async def redis(scratch_redis: Redis) -> Redis:
    return scratch_redis


async def enqueue(
    fair: FairQueue,
    account: str,
    cost: int = 100,
    limits: QueueLimits | None = None,
    arrived: float | None = None,
    worker: str | None = None,
) -> str | Backlog:
    """The job's id, or what stood ahead of it if the limits refused it."""
    job_id = new_id(arrived)
    now_ms = int(time.time() * 1000)
    queued = await fair.enqueue(
        QUEUE,
        job_id,
        f"job:{job_id}",
        b"{}",
        worker=worker,
        expires_ms=60_000,
        account=account,
        cost=cost,
        now_ms=now_ms,
        limits=limits,
    )
    return queued.refused or job_id


async def start_next(redis: Redis) -> str:
    """What a worker does: take the next job not yet started (which moves the clock to it)."""
    (job,) = await Claims(redis, WORKER).take(QUEUE, 1, mark_ms=60_000)
    return job.id


async def test_a_newcomer_runs_next_not_after_a_flood(redis: Redis) -> None:
    fair = FairQueue(redis)
    flood = [await enqueue(fair, "flooder") for _ in range(40)]
    first = await start_next(redis)
    assert first == flood[0]
    quiet = await enqueue(fair, "quiet")
    assert await start_next(redis) == quiet, "the quiet account's job waited behind the flood"
    # Both keep sending: their jobs alternate rather than one account's running first.
    more_quiet = [await enqueue(fair, "quiet") for _ in range(3)]
    order = [await start_next(redis) for _ in range(6)]
    assert [job in more_quiet for job in order] == [False, True, False, True, False, True]


async def test_shares_follow_tokens_not_requests(redis: Redis) -> None:
    fair = FairQueue(redis)
    big = [await enqueue(fair, "big", cost=300) for _ in range(4)]
    small = [await enqueue(fair, "small", cost=100) for _ in range(12)]
    order = [await start_next(redis) for _ in range(16)]
    # Per 300 tokens served to each: one big job for every three small ones.
    assert sum(job in big for job in order[:8]) == 2
    assert set(order) == set(big) | set(small)


async def test_the_backlog_is_what_waits_ahead_of_the_accounts_next_job(redis: Redis) -> None:
    fair = FairQueue(redis)
    for _ in range(30):
        await enqueue(fair, "flooder")
    await start_next(redis)
    await start_next(redis)
    whole, flooder, quiet = await asyncio.gather(
        fair.backlog(QUEUE), fair.backlog(QUEUE, "flooder"), fair.backlog(QUEUE, "quiet")
    )
    assert (whole.running, whole.waiting) == (2, 28)
    assert flooder.waiting == 28, "all of the flooder's own backlog is ahead of its next job"
    assert quiet.waiting == 0, "nothing is ahead of an idle account's next job"
    assert 0 <= whole.oldest_wait < 5


async def test_a_job_is_routed_only_to_a_worker_that_accepts_and_handed_back_unless_running(
    redis: Redis,
) -> None:
    fair = FairQueue(redis)

    async def routed(worker: str) -> tuple[str, bool]:
        job_id = new_id()
        went = await fair.enqueue(
            QUEUE,
            job_id,
            f"job:{job_id}",
            b"{}",
            worker=worker,
            expires_ms=60_000,
            account="a",
            cost=1,
            now_ms=int(time.time() * 1000),
        )
        return job_id, went.routed

    direct = direct_queue_key(QUEUE, "w1")
    gone, went = await routed("w1")  # no accepting key: stopped, draining or dead
    assert not went
    assert await redis.zscore(QUEUE, gone) is not None
    await redis.set(accepting_key("w1"), b"1")
    running, went_running = await routed("w1")
    waiting, went_waiting = await routed("w1")
    assert went_running
    assert went_waiting
    assert set(await redis.zrange(direct, 0, -1)) == {running.encode(), waiting.encode()}
    await redis.set(f"arq:in-progress:{running}", b"1")  # w1 runs this one
    await redis.delete(accepting_key("w1"))  # ... and drains
    assert await fair.hand_back(QUEUE, "w1") == 1
    assert await redis.zrange(direct, 0, -1) == [running.encode()], "a running job stays with its worker"
    ahead = await redis.zrange(QUEUE, 0, 0)
    assert ahead == [waiting.encode()], "a handed-back job has waited already: it goes first"


async def test_a_job_past_the_queues_limits_is_refused_and_nothing_is_written(redis: Redis) -> None:
    fair = FairQueue(redis)
    limits = QueueLimits(depth=3, wait=30.0)
    for _ in range(3):
        assert isinstance(await enqueue(fair, "flooder", limits=limits), str)
    before = await redis.zcard(QUEUE)
    refused = await enqueue(fair, "flooder", limits=limits)
    assert isinstance(refused, Backlog)
    assert refused.waiting == 3
    assert await redis.zcard(QUEUE) == before, "a refused job was queued"
    # Another account's job would go ahead of the flood: nothing waits ahead of it.
    assert isinstance(await enqueue(fair, "quiet", limits=limits), str)


async def test_a_routed_job_overflows_to_the_models_queue_and_is_refused_past_both(redis: Redis) -> None:
    """A routed job (LoRA, session) waits on its worker's own queue, held to the limits there. Past
    them it goes to the model's queue, for any worker, rather than being refused beside an idle
    one; only past both is it refused, with nothing written."""
    fair = FairQueue(redis)
    await redis.set(accepting_key("w1"), b"1")
    limits = QueueLimits(depth=2, wait=30.0)
    for _ in range(4):
        assert isinstance(await enqueue(fair, "lora", limits=limits, worker="w1"), str)
    assert await redis.zcard(direct_queue_key(QUEUE, "w1")) == 2
    assert await redis.zcard(QUEUE) == 2, "the overflow went to the model's queue"
    refused = await enqueue(fair, "lora", limits=limits, worker="w1")
    assert isinstance(refused, Backlog)
    assert refused.waiting == 2
    assert await redis.zcard(direct_queue_key(QUEUE, "w1")) + await redis.zcard(QUEUE) == 4, (
        "a refused job was queued"
    )


async def test_a_job_behind_one_that_has_waited_too_long_is_refused(redis: Redis) -> None:
    fair = FairQueue(redis)
    limits = QueueLimits(depth=100, wait=30.0)
    assert isinstance(await enqueue(fair, "a", arrived=time.time() - 45), str)  # waiting 45 s
    refused = await enqueue(fair, "a", limits=limits)
    assert isinstance(refused, Backlog)
    assert refused.waiting == 1
    assert 44 < refused.oldest_wait < 60


async def test_a_claim_reads_its_job_counts_its_try_and_takes_its_abort(redis: Redis) -> None:
    """What arq would read in a round trip of its own before running a job comes with the claim,
    and the job is recorded as its worker's (recovery reads that should the worker die)."""
    job_id = new_id()
    now_ms = int(time.time() * 1000)
    key = job_key_prefix + job_id
    await FairQueue(redis).enqueue(
        QUEUE, job_id, key, b"the job", worker=None, expires_ms=60_000, account="a", cost=1, now_ms=now_ms
    )
    await redis.zadd(abort_jobs_ss, {job_id: now_ms})  # aborted while it waited
    (job,) = await Claims(redis, WORKER).take(QUEUE, 1, mark_ms=60_000)
    assert (job.id, job.data, job.attempt, job.aborted) == (job_id, b"the job", 1, True)
    assert await redis.smembers(RUNNING) == {job_id.encode()}  # type: ignore[misc]
    assert await redis.zscore(abort_jobs_ss, job_id) is None, "an abort is taken once"
    # Its worker gone (the mark released, as recovery does), the next claim is its second try.
    await redis.delete(in_progress_key_prefix + job_id, key)
    (again,) = await Claims(redis, WORKER).take(QUEUE, 1, mark_ms=60_000)
    assert (again.data, again.attempt, again.aborted) == (None, 2, False), "its data expired meanwhile"


async def test_a_job_ends_over_or_handed_back_for_another_claim(redis: Redis) -> None:
    """A job over leaves nothing behind (arq's keys, the queue, the running set); one its worker
    stopped before it ended stays queued, unmarked, and the next claim takes it, its try counted."""
    fair, claims = FairQueue(redis), Claims(redis, WORKER)
    stopped, done = await enqueue(fair, "a"), await enqueue(fair, "a")
    assert isinstance(stopped, str)
    assert isinstance(done, str)
    await redis.set(job_key_prefix + done, b"its data")  # as arq keeps it
    taken = await claims.take(QUEUE, 2, mark_ms=60_000)
    assert [job.id for job in taken] == [stopped, done]
    await claims.finish(QUEUE, done, over=True)
    async with redis.pubsub(ignore_subscribe_messages=True) as bell:
        await bell.subscribe(pickup_channel(QUEUE))
        await claims.finish(QUEUE, stopped, over=False)
        async with asyncio.timeout(5):
            while await bell.get_message(timeout=5) is None:  # its own ack first
                pass
    assert await redis.smembers(RUNNING) == set()  # type: ignore[misc]
    assert await redis.zrange(QUEUE, 0, -1) == [stopped.encode()]
    assert not await redis.exists(
        in_progress_key_prefix + done, retry_key_prefix + done, job_key_prefix + done
    )
    (again,) = await claims.take(QUEUE, 1, mark_ms=60_000)
    assert (again.id, again.attempt) == (stopped, 2)


async def test_a_claim_whose_reply_was_lost_is_answered_again(
    redis_server: EmbeddedRedis, redis: Redis
) -> None:
    """Redis took the job for the worker (marked in progress, recorded as running) and the reply
    was lost: asked again, the claim answers what it took, instead of leaving the job marked as
    this worker's, never to start until the mark expires (the job's timeout, minutes)."""
    job_id = new_id()
    now_ms = int(time.time() * 1000)
    await FairQueue(redis).enqueue(
        QUEUE,
        job_id,
        job_key_prefix + job_id,
        b"lost",
        worker=None,
        expires_ms=60_000,
        account="a",
        cost=1,
        now_ms=now_ms,
    )
    async with LosesOneReply(redis_server, marker=QUEUE.encode()) as proxy:
        through = Multiplexed.from_url(f"{proxy.url}/{SCRATCH_DB}")  # the fixture's; a worker's connection
        claims = Claims(through, WORKER)
        await claims.take("sluice:queue:warm-up", 1, mark_ms=60_000)  # the script loaded: it runs
        with pytest.raises(RedisError):
            await claims.take(QUEUE, 1, mark_ms=60_000)
        assert proxy.lost == 1
        assert await redis.exists(in_progress_key_prefix + job_id), "the lost claim took the job"
        (job,) = await claims.take(QUEUE, 1, mark_ms=60_000)
        assert (job.id, job.data, job.attempt) == (job_id, b"lost", 1)
        assert await claims.take(QUEUE, 1, mark_ms=60_000) == [], "a claim answered is not answered again"
        await through.aclose()
    await deregister(redis, WORKER)
    assert not await redis.exists(claim_receipts_key(WORKER)), "a worker's receipts go with it"
