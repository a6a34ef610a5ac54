"""A client that leaves mid-stream stops its generation: the engine does not work for nobody."""

from __future__ import annotations

import asyncio
import time

import httpx
from redis.asyncio import Redis

from sluice.contract import Done, decode_event, events_key
from tests.conftest import Stack


async def test_disconnect_aborts_the_job(stack: Stack) -> None:
    body = {"prompt": "Write a very long story about a dragon.", "stream": True, "max_tokens": 4000}
    async with (
        httpx.AsyncClient(timeout=30) as client,
        client.stream("POST", stack.native_url, json=body) as response,
    ):
        request_id = response.headers["cf-ai-req-id"]
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                break  # one token seen; now hang up
    redis = Redis.from_url(stack.redis_url)
    try:
        # arq marks a running job in-progress; the abort ends it long before 4,000 tokens (~2 min).
        deadline = time.monotonic() + 15
        while await redis.exists(f"arq:in-progress:{request_id}"):
            assert time.monotonic() < deadline, "the job kept running after its client left"
            await asyncio.sleep(0.05)
        entries = await redis.xrange(events_key(request_id))
        events = [decode_event(fields[b"e"]) for _, fields in entries]
        assert not any(isinstance(e, Done) for e in events)
        generated = sum(getattr(e, "tokens", 0) for e in events)
        assert generated < 4000
    finally:
        await redis.aclose()
