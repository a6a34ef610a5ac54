"""A request's overall deadline (``SLUICE_JOB_TIMEOUT``): past it a stream ends with an error
frame naming the timeout, never a silent close, a plain request gets a 408 in its API's
envelope, and the job is aborted on its worker."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import cast

import httpx
import openai
import pytest
from redis import Redis

from sluice.contract import EVENT_FIELD, Done, decode_event, events_key
from sluice.redis_server import EmbeddedRedis, free_port
from tests.conftest import MODEL, start, stop, wait_until_ready

TIMEOUT = 2  # seconds; each request below would run for 10


@pytest.fixture(scope="module")
def slow(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Redis]]:
    logs = tmp_path_factory.mktemp("deadline-logs")
    redis_url = redis_server.url.rsplit("/", 1)[0] + "/9"
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_url, "SLUICE_AUTH": "open", "SLUICE_PORT": str(port)}
    env |= {"SLUICE_WORKER_METRICS_PORT": "0", "SLUICE_JOB_TIMEOUT": str(TIMEOUT)}
    env |= {"SLUICE_SYNTHETIC_TOKENS_PER_SECOND": "20"}
    env["SLUICE_MODELS"] = json.dumps([{"name": MODEL, "engine": "synthetic", "model": "synthetic"}])
    processes = [start("worker", env, logs / "worker.log"), start("gateway", env, logs / "gateway.log")]
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, processes)
        with Redis.from_url(redis_url) as redis:
            yield url, redis
    finally:
        for process in processes:
            stop(process)


def test_a_stream_past_its_deadline_ends_with_an_error_frame(slow: tuple[str, Redis]) -> None:
    url, redis = slow
    body = {"prompt": "Hi", "stream": True, "max_tokens": 200}
    with httpx.stream(
        "POST", f"{url}/client/v4/accounts/acct/ai/run/{MODEL}", json=body, timeout=30
    ) as response:
        assert response.status_code == 200
        job_id = response.headers["x-request-id"]
        frames = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert frames[-1] == "[DONE]"
    last = json.loads(frames[-2])
    assert last["errors"][0]["code"] == 3007
    assert f"{TIMEOUT}s" in last["errors"][0]["message"]
    assert 1 < len(frames) - 2 < 200, "some tokens, then the deadline; not the whole answer"
    # On its worker the job ends (arq drops its in-progress mark) without its answer finishing.
    deadline = time.monotonic() + 20
    while redis.exists(f"arq:in-progress:{job_id}"):
        assert time.monotonic() < deadline, "the job ran on past its deadline"
        time.sleep(0.05)
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], redis.xrange(events_key(job_id)))
    events = [decode_event(fields[EVENT_FIELD]) for _, fields in entries]
    assert not any(isinstance(event, Done) for event in events), "the engine generated the whole answer"


def test_a_plain_request_past_its_deadline_is_a_408_in_each_envelope(slow: tuple[str, Redis]) -> None:
    url, _ = slow
    native = httpx.post(
        f"{url}/client/v4/accounts/acct/ai/run/{MODEL}", json={"prompt": "Hi", "max_tokens": 200}, timeout=30
    )
    assert native.status_code == 408
    assert native.json()["errors"][0]["code"] == 3007
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=200
        )
    assert raised.value.status_code == 408
    assert "timeout" in raised.value.message.lower()
