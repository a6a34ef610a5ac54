"""Prometheus metrics move as a scripted mix of requests says they should."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis as AsyncRedis

from gateway.metrics import exposition
from sluice.contract import WorkerInfo, queue_key
from sluice.fairqueue import FairQueue
from sluice.ids import new_id
from sluice.redis_server import EmbeddedRedis
from sluice.registry import beat
from tests.conftest import MODEL, Stack, hang_up_after_first_frame, until_job_ends

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
NATIVE_ROUTE = "/client/v4/accounts/{account_id}/ai/run/{model}"


def scrape(url: str) -> Samples:
    return parse(httpx.get(url, timeout=10).text)


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def http(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=60) as client:
        yield client


async def leave_after_first_frame(stack: Stack) -> None:
    """A client that leaves after the first frame, until its job has ended."""
    body = {"prompt": "Write a very long story about a dragon.", "stream": True, "max_tokens": 2000}
    gone = await hang_up_after_first_frame(stack.native_url, body)
    await until_job_ends(stack.redis_url, gone)


def test_metrics_follow_a_scripted_mix(stack: Stack, http: httpx.Client) -> None:
    gateway_url, run = f"{stack.url}/metrics", f"/client/v4/accounts/acct/ai/run/{MODEL}"
    before, worker_before = scrape(gateway_url), scrape(stack.worker_metrics_url)

    assert http.post(run, json={"prompt": "Say hi.", "max_tokens": 3, "temperature": 0}).status_code == 200
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "stream": True}
    chat["temperature"] = 0
    assert http.post("/v1/chat/completions", json=chat).status_code == 200
    assert http.post(run, json={"prompt": "hi", "temperature": 9}).status_code == 400
    assert http.post(run, json={"prompt": "Hello", "max_tokens": 7968}).status_code == 413
    with redis.Redis.from_url(stack.redis_url) as r:  # a waiting job: every worker slot is busy
        r.zadd(queue_key(MODEL), {"placeholder": int(time.time() * 1000) + 3_600_000})
        try:
            busy = http.post(run, json={"prompt": "hi", "options": {"rejectIfBusy": True}})
        finally:
            r.zrem(queue_key(MODEL), "placeholder")
    assert busy.status_code == 429
    asyncio.run(leave_after_first_frame(stack))

    after, worker_after = scrape(gateway_url), scrape(stack.worker_metrics_url)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    ok = {"api": "workers_ai", "route": NATIVE_ROUTE, "model": MODEL, "status": "200"}
    assert delta("sluice_requests_total", **ok) == 2  # the plain one and the one that left
    assert delta("sluice_requests_total", api="workers_ai", route=NATIVE_ROUTE, model="", status="400") == 1
    assert delta("sluice_requests_total", api="workers_ai", route=NATIVE_ROUTE, model="", status="413") == 1
    assert delta("sluice_requests_total", api="workers_ai", route=NATIVE_ROUTE, model="", status="429") == 1
    assert delta("sluice_rejections_total", reason="context_window") == 1
    assert delta("sluice_rejections_total", reason="capacity") == 1
    assert delta("sluice_aborts_total", cause="client_gone") == 1
    assert delta("sluice_time_to_first_token_seconds_count", model=MODEL) == 3
    assert delta("sluice_queue_wait_seconds_count", model=MODEL) == 3
    assert delta("sluice_inter_token_seconds_count", model=MODEL) > 0
    assert delta("sluice_tokens_total", model=MODEL, kind="completion") == 6  # the two that finished
    assert value(after, "sluice_live_workers", queue=queue_key(MODEL)) == 1
    assert value(after, "sluice_queue_depth", queue=queue_key(MODEL)) == 0
    assert value(after, "sluice_in_flight_requests", api="workers_ai") == 0

    def worker_delta(name: str, **labels: str) -> float:
        return value(worker_after, name, **labels) - value(worker_before, name, **labels)

    assert worker_delta("sluice_worker_jobs_total", model=MODEL, outcome="completed") == 2
    assert worker_delta("sluice_worker_jobs_total", model=MODEL, outcome="aborted") == 1
    assert value(worker_after, "sluice_worker_running_jobs", model=MODEL) == 0


async def test_the_queue_depth_counts_the_jobs_routed_to_its_workers(redis_server: EmbeddedRedis) -> None:
    """LoRA and session jobs wait on their worker's own queue while its slots are full: the
    depth an autoscaler reads counts them with the model's queue, or it would not scale for them."""
    client = AsyncRedis.from_url(redis_server.url.rsplit("/", 1)[0] + "/13")  # its own database: flushed
    queue = queue_key("depth-test")
    worker = WorkerInfo(
        id="depth-worker", model="depth-test", engine="synthetic", queue=queue, slots=1, started_at=0
    )
    try:
        await beat(client, worker, ttl=30)
        fair = FairQueue(client)
        for routed in (worker.id, worker.id, None):
            job = new_id()
            now_ms = int(time.time() * 1000)
            queued = await fair.enqueue(
                queue,
                job,
                f"job:{job}",
                b"{}",
                worker=routed,
                expires_ms=60_000,
                account="a",
                cost=1,
                now_ms=now_ms,
            )
            assert queued.routed == (routed is not None)
        samples = parse((await exposition(client, 30.0, [queue])).decode())
        assert value(samples, "sluice_queue_depth", queue=queue) == 3
    finally:
        await client.flushdb()
        await client.aclose()
