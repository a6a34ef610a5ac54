"""The multiplexed relay against a real Redis: replay, wake-ups and many streams on one connection."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Iterable

import pytest
from msgspec import msgpack
from redis.asyncio import Redis

from gateway import relay as relay_module
from gateway.relay import StreamRelay
from sluice.contract import EVENT_FIELD, Delta, Done, Event, Failed, Started, Usage, decode_event, events_key
from sluice.errors import ErrorCode
from sluice.events import Along
from sluice.multiplex import Multiplexed
from sluice.redis_server import EmbeddedRedis
from tests.faults import LosesOneReply
from worker.publish import EventPublisher


@pytest.fixture
async def redis(redis_server: EmbeddedRedis) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture(autouse=True)
def _long_block(monkeypatch: pytest.MonkeyPatch) -> None:
    # A block far longer than the test may take: only a wake-up can end a read in time.
    monkeypatch.setattr(relay_module, "BLOCK_MS", 600_000)


@pytest.fixture
async def relay(redis_server: EmbeddedRedis, redis: Redis) -> AsyncIterator[StreamRelay]:
    relay = StreamRelay(redis_server.url, control=redis)
    await relay.start()
    yield relay
    await relay.close()


@contextlib.asynccontextmanager
async def busy_relay(redis_server: EmbeddedRedis, redis: Redis, hold_ms: float) -> AsyncIterator[StreamRelay]:
    """A relay busy above 1 event/s: coalescing from its first measured tenth of a second on."""
    relay = StreamRelay(redis_server.url, control=redis, coalesce_above=1, coalesce_ms=hold_ms)
    await relay.start()
    try:
        yield relay
    finally:
        await relay.close()


async def paced(publisher: EventPublisher, job_id: str, texts: Iterable[str], every: float) -> None:
    """A stream's tokens at a steady pace (the pace of a model, not a wait for anything)."""
    for text in texts:
        await publisher.publish(job_id, [Delta(text=text, tokens=1)])
        await asyncio.sleep(every)


async def test_events_written_before_subscribing_are_replayed(relay: StreamRelay, redis: Redis) -> None:
    publisher = EventPublisher(redis, ttl_seconds=60)
    await publisher.publish("early", [Delta(text="a", tokens=1), Delta(text="b", tokens=1)])
    subscription = relay.subscribe("early")
    async with asyncio.timeout(10):
        assert await subscription.next() == [Delta(text="ab", tokens=2)]  # coalesced into one entry
    subscription.close()


async def test_a_new_jobs_first_events_reach_a_blocked_read_through_its_inbox(
    relay: StreamRelay, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay_module, "UNJOINED_BLOCK_MS", 600_000)  # nothing else ends the read
    idle = relay.subscribe("idle")
    await asyncio.sleep(0)  # the reader is now blocked, for up to ten minutes
    late = relay.subscribe("late")
    publisher = EventPublisher(redis, ttl_seconds=60)
    await publisher.publish("late", [Delta(text="hi", tokens=1)], Along(inbox=relay.inbox))
    async with asyncio.timeout(10):
        assert await late.next() == [Delta(text="hi", tokens=1)]
        await publisher.publish("late", [Delta(text="then", tokens=1)], Along(inbox=relay.inbox))
        assert await late.next() == [Delta(text="then", tokens=1)]  # from its own stream, joined
    idle.close()
    late.close()


async def test_a_stream_whose_first_write_skipped_the_inbox_is_still_relayed(
    relay: StreamRelay, redis: Redis
) -> None:
    """As a worker from before inboxes writes, during a rolling update."""
    idle = relay.subscribe("idle")
    await asyncio.sleep(0)  # the reader is now blocked, for up to ten minutes
    older = relay.subscribe("older")
    await EventPublisher(redis, ttl_seconds=60).publish("older", [Delta(text="hi", tokens=1)])
    async with asyncio.timeout(10):
        assert await older.next() == [Delta(text="hi", tokens=1)]
    idle.close()
    older.close()


async def test_a_first_write_read_from_its_stream_is_not_relayed_again_from_the_inbox(
    relay: StreamRelay, redis: Redis
) -> None:
    publisher = EventPublisher(redis, ttl_seconds=60)
    twice = relay.subscribe("twice")  # read from its start by every read now, as it has no event
    probe = relay.subscribe("probe")
    await publisher.publish("probe", [Delta(text="read", tokens=1)])
    async with asyncio.timeout(10):
        await probe.next()  # the reads take in "twice" from its start now; the next one also its copy
        await publisher.publish("twice", [Delta(text="once", tokens=1)], Along(inbox=relay.inbox))
        assert await twice.next() == [Delta(text="once", tokens=1)]
        done = Done(finish_reason="stop", usage=Usage())
        await publisher.publish("twice", [done])
        assert await twice.next() == [done]
    twice.close()
    probe.close()


async def test_a_first_write_read_from_the_inbox_and_its_stream_in_one_reply_is_relayed_once(
    redis_server: EmbeddedRedis, redis: Redis
) -> None:
    """As when the write lands between two reads: the next one finds it in both."""
    relay = StreamRelay(redis_server.url, control=redis)
    publisher = EventPublisher(redis, ttl_seconds=60)
    both = relay.subscribe("both")
    await publisher.publish("both", [Delta(text="once", tokens=1)], Along(inbox=relay.inbox))
    await relay.start()  # its first read: the inbox and the stream, each from its start
    try:
        async with asyncio.timeout(10):
            assert await both.next() == [Delta(text="once", tokens=1)]
            done = Done(finish_reason="stop", usage=Usage())
            await publisher.publish("both", [done])
            assert await both.next() == [done]
    finally:
        both.close()
        await relay.close()


async def test_many_streams_each_get_their_own_events_in_order(relay: StreamRelay, redis: Redis) -> None:
    subscriptions = {f"job{i}": relay.subscribe(f"job{i}") for i in range(150)}  # beyond a 100-conn pool
    for round_ in range(3):
        for job_id in subscriptions:
            await EventPublisher(redis, 60).publish(job_id, [Delta(text=f"{job_id}:{round_}", tokens=1)])
    done = Done(finish_reason="stop", usage=Usage())
    for job_id in subscriptions:
        await EventPublisher(redis, 60).publish(job_id, [done])
    async with asyncio.timeout(20):
        for job_id, subscription in subscriptions.items():
            received: list[Event] = []
            while len(received) < 4:
                received += await subscription.next()
            assert received == [Delta(text=f"{job_id}:{r}", tokens=1) for r in range(3)] + [done]
            subscription.close()


async def test_an_event_the_gateway_cannot_read_ends_its_stream_and_the_relay_reads_on(
    relay: StreamRelay, redis: Redis
) -> None:
    """A newer worker's event (a rolling update) fails its own stream, with an error, not the
    relay every stream of the gateway hangs on."""
    unreadable, other = relay.subscribe("newer"), relay.subscribe("other")
    await redis.xadd(events_key("newer"), {EVENT_FIELD: msgpack.encode({"type": "from-the-future"})})
    async with asyncio.timeout(10):
        (event,) = await unreadable.next()
        assert isinstance(event, Failed)
        assert event.code == ErrorCode.INTERNAL
        await EventPublisher(redis, 60).publish("other", [Delta(text="still here", tokens=1)])
        assert await other.next() == [Delta(text="still here", tokens=1)]
    unreadable.close()
    other.close()


async def test_streams_expire(redis: Redis) -> None:
    await EventPublisher(redis, ttl_seconds=30).publish("ttl", [Delta(text="x", tokens=1)])
    assert 0 < await redis.ttl("sluice:events:ttl") <= 30


async def test_a_busy_relay_sends_each_stream_fewer_bigger_frames(
    redis_server: EmbeddedRedis, redis: Redis
) -> None:
    takes: list[list[Event]] = []
    async with busy_relay(redis_server, redis, hold_ms=1000) as relay:
        subscription = relay.subscribe("busy")
        producing = asyncio.create_task(paced(EventPublisher(redis, 60), "busy", "0123456789", 0.03))
        async with asyncio.timeout(10):
            while sum(len(take) for take in takes) < 10:
                takes.append(await subscription.next())
            await producing
        subscription.close()
    assert takes[0] == [Delta(text="0", tokens=1)]  # a stream's first event is never held
    assert [event.text for take in takes for event in take if isinstance(event, Delta)] == list("0123456789")
    # Ten tokens over 300 ms (longer on a slow host), one take per second once busy: a handful of
    # frames, not ten.
    assert len(takes) < 7, [len(take) for take in takes]


async def test_a_jobs_first_events_are_not_held_back_by_the_publish_interval(redis: Redis) -> None:
    # An interval far longer than the test: only a job's first events may cut it short.
    publisher = EventPublisher(redis, ttl_seconds=60, interval=600)
    started = Started(worker="w")
    async with asyncio.timeout(10):
        await publisher.publish("first", [started, Delta(text="a", tokens=1)])
    later = asyncio.create_task(publisher.publish("first", [Delta(text="b", tokens=1)]))
    await asyncio.sleep(0)
    assert not later.done(), "a job's later tokens wait out the interval"
    async with asyncio.timeout(10):
        await publisher.publish("second", [started, Delta(text="c", tokens=1)])  # its time to first token
        await later  # and the waiting token rode along in the same write
    assert await redis.xlen("sluice:events:first") == 3  # Started, "a", "b"
    assert await redis.xlen("sluice:events:second") == 2


async def test_a_busy_relay_reads_a_new_streams_first_token_at_once(
    redis_server: EmbeddedRedis, redis: Redis
) -> None:
    publisher = EventPublisher(redis, ttl_seconds=60)
    # Then holding each read for ten minutes: only a first token may cut the hold short.
    async with busy_relay(redis_server, redis, hold_ms=600_000) as relay:
        busy = relay.subscribe("busy")
        producing = asyncio.create_task(paced(publisher, "busy", itertools.repeat("."), 0.01))
        try:
            await busy.next()
            await asyncio.sleep(0.3)  # the relay measures its rate over tenths of a second: now busy
            new = relay.subscribe("new")
            await publisher.publish("new", [Delta(text="first", tokens=1)], Along(inbox=relay.inbox))
            async with asyncio.timeout(10):
                assert await new.next() == [Delta(text="first", tokens=1)]
        finally:
            producing.cancel()
            busy.close()


async def test_a_write_whose_reply_was_lost_is_not_applied_both(
    redis_server: EmbeddedRedis, redis: Redis
) -> None:
    async with LosesOneReply(redis_server, marker=b"once only") as proxy:
        through = Multiplexed.from_url(proxy.url)  # as a worker's publisher writes
        publisher = EventPublisher(through, ttl_seconds=60)
        await publisher.publish("warm-up", [Delta(text="loads the script", tokens=1)])
        async with asyncio.timeout(10):
            await publisher.publish("once", [Delta(text="once only", tokens=1)])  # retried after the loss
            await publisher.publish("once", [Delta(text="then this", tokens=1)])
        await through.aclose()
    assert proxy.lost == 1
    events = [decode_event(fields[EVENT_FIELD]) for _, fields in await redis.xrange("sluice:events:once")]
    assert events == [Delta(text="once only", tokens=1), Delta(text="then this", tokens=1)]
