"""The connection the request path's commands share (enqueue, claims, appends, the relay's read):
every caller gets its own reply, whatever the others do, and a lost Redis is survived."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import pytest
from redis.exceptions import ConnectionError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sluice.multiplex import Multiplexed
from sluice.redis_server import EmbeddedRedis
from tests.faults import GoesSilent


@pytest.fixture
async def connection(redis_server: EmbeddedRedis) -> AsyncIterator[Multiplexed]:
    multiplexed = Multiplexed.from_url(redis_server.url)
    yield multiplexed
    await multiplexed.aclose()


async def test_concurrent_callers_each_get_their_own_reply(connection: Multiplexed) -> None:
    replies = await asyncio.gather(*(connection.execute("ECHO", f"caller {n}") for n in range(500)))
    assert replies == [f"caller {n}".encode() for n in range(500)]


async def test_a_caller_that_gives_up_leaves_the_others_in_step(connection: Multiplexed) -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await connection.execute("BLPOP", "sluice:test:never", 0.3)  # answered (nil) at 0.3 s
    # Queued behind the abandoned command: must get its own reply, not the nil meant for BLPOP.
    assert await connection.execute("ECHO", "next") == b"next"


async def test_an_error_reply_is_raised_to_its_caller_only(connection: Multiplexed) -> None:
    await connection.execute("SET", "sluice:test:text", "not a number")
    results = await asyncio.gather(
        connection.execute("ECHO", "before"),
        connection.execute("INCR", "sluice:test:text"),
        connection.execute("ECHO", "after"),
        return_exceptions=True,
    )
    assert results[0] == b"before"
    assert isinstance(results[1], ResponseError)
    assert results[2] == b"after"


@pytest.mark.parametrize(
    ("settings", "caller_bound", "gives_up_with"),
    [
        ({"stalled_after": 0.2}, 0.5, TimeoutError),  # as the gateway gives up on Redis
        ({"timeout": 0.5}, 5.0, RedisTimeoutError),  # a worker's claims, the relay's reads: none
    ],
    ids=["the-caller-gives-up", "the-connection-gives-up"],
)
async def test_a_connection_gone_silent_is_dropped_and_the_next_command_answered(
    redis_server: EmbeddedRedis,
    settings: dict[str, float],
    caller_bound: float,
    gives_up_with: type[Exception],
) -> None:
    """A half-open connection must not hold every later command: neither until the caller's own
    timeout, nor, for a caller that sets none, for ever."""
    async with GoesSilent(redis_server) as proxy:
        connection = Multiplexed.from_url(proxy.url, **settings)
        assert await connection.execute("PING") == b"PONG"
        proxy.silence()
        with pytest.raises(gives_up_with):
            async with asyncio.timeout(caller_bound):
                await connection.execute("PING")
        async with asyncio.timeout(5):
            assert await connection.execute("ECHO", "answered") == b"answered"
        await connection.aclose()


async def test_a_command_that_cannot_be_sent_leaves_the_others_in_step(connection: Multiplexed) -> None:
    with pytest.raises(TypeError):
        await connection.execute("SET", "sluice:test:none", None)  # type: ignore[arg-type]  # as a bug might
    async with asyncio.timeout(5):
        assert await connection.execute("ECHO", "mine") == b"mine"


async def test_scripts_run_again_after_redis_restarts_without_them() -> None:
    source = "return tonumber(ARGV[1]) * 2"
    with EmbeddedRedis() as server:
        connection = Multiplexed.from_url(server.url)
        double = connection.register_script(source)
        assert await double(args=[21]) == 42
        server.stop(keep_data=True)  # restarted on the same port
        with pytest.raises(ConnectionError):
            await connection.execute("PING")
        server.start()  # an empty script cache: the script is sent whole, once
        assert await double(args=[4]) == 8
        sha = hashlib.sha1(source.encode()).hexdigest()
        assert await connection.execute("SCRIPT", "EXISTS", sha) == [1], "and cached for the next call"
        await connection.aclose()
