"""Backpressure: a queue too deep is refused at once with Capacity (3040) and a Retry-After,
rather than queueing work that cannot be served in time; the queue gauges count waiting jobs only."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from redis import Redis

from sluice.contract import events_key, queue_key
from sluice.redis_server import EmbeddedRedis, free_port
from tests.conftest import MODEL, start, stop, wait_until_ready


@pytest.fixture(scope="module")
def narrow(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A gateway and a one-slot worker at 20 tokens/s, whose queue takes two waiting jobs."""
    logs = tmp_path_factory.mktemp("backpressure-logs")
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_server.url.rsplit("/", 1)[0] + "/6", "SLUICE_PORT": str(port)}
    env |= {"SLUICE_AUTH": "open", "SLUICE_WORKER_METRICS_PORT": "0", "SLUICE_MAX_QUEUE_DEPTH": "2"}
    env |= {"SLUICE_WORKER_CONCURRENCY": "1", "SLUICE_SYNTHETIC_TOKENS_PER_SECOND": "20"}
    env["SLUICE_MODELS"] = json.dumps([{"name": MODEL, "engine": "synthetic", "model": "synthetic"}])
    processes = [start("worker", env, logs / "worker.log"), start("gateway", env, logs / "gateway.log")]
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, processes)
        yield url
    finally:
        for process in processes:
            stop(process)


def run_url(url: str) -> str:
    return f"{url}/client/v4/accounts/acct/ai/run/{MODEL}"


def waiting(url: str) -> float:
    scrape = httpx.get(f"{url}/metrics", timeout=10).text
    match = re.search(r'^sluice_queue_depth\{queue="[^"]+"\} (\S+)$', scrape, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_a_full_queue_is_refused_with_capacity_and_a_retry_after(narrow: str) -> None:
    slow = {"prompt": "Hi", "stream": True, "max_tokens": 400}  # 20 s on the one slot: ended below
    with httpx.Client(timeout=60) as http, ThreadPoolExecutor(2) as pool:
        with http.stream("POST", run_url(narrow), json=slow) as running:
            lines = running.iter_lines()
            next(line for line in lines if line.startswith("data: "))
            # Running, not waiting: the gauge and rejectIfBusy tell the two apart.
            assert waiting(narrow) == 0
            busy = http.post(run_url(narrow), json={"prompt": "Hi", "options": {"rejectIfBusy": True}})
            assert busy.status_code == 429
            assert busy.json()["errors"][0]["code"] == 3040
            queued = [pool.submit(http.post, run_url(narrow), json={"prompt": "Hi", "max_tokens": 2})]
            queued.append(pool.submit(http.post, run_url(narrow), json={"prompt": "Hi", "max_tokens": 2}))
            deadline = time.monotonic() + 10
            while waiting(narrow) < 2:
                assert time.monotonic() < deadline, "the two requests never queued"
                time.sleep(0.02)
            refused = http.post(run_url(narrow), json={"prompt": "Hi", "max_tokens": 2})
            assert refused.status_code == 429
            error = refused.json()["errors"][0]
            assert (error["code"], error["message"]) == (
                3040,
                "AiError: Capacity temporarily exceeded, please try again.",
            )
            assert 1 <= int(refused.headers["retry-after"]) <= 60
            assert refused.headers["x-should-retry"] == "true"
            after = next(line for line in lines if line.startswith("data: "))
            assert '"response"' in after, "the running stream goes on, undisturbed"
        # Its client leaves: the slot frees for the queued two.
        assert [f.result(30).status_code for f in queued] == [200, 200], "nothing queued was lost"
    assert httpx.post(run_url(narrow), json={"prompt": "Hi", "max_tokens": 2}, timeout=30).status_code == 200


def test_a_queued_job_whose_client_leaves_is_never_run(narrow: str, redis_server: EmbeddedRedis) -> None:
    redis = Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/6")
    queue = queue_key(MODEL)
    slow = {"prompt": "Hi", "stream": True, "max_tokens": 400}  # 20 s on the one slot: ended below
    with httpx.Client(timeout=60) as http, http.stream("POST", run_url(narrow), json=slow) as running:
        lines = running.iter_lines()  # held: a line iterator dropped closes the connection
        next(line for line in lines if line.startswith("data: "))
        before = set(redis.zrange(queue, 0, -1))  # type: ignore[arg-type]
        with leaving_client(run_url(narrow), {"prompt": "Hi"}):
            until(lambda: len(set(redis.zrange(queue, 0, -1)) - before) == 1)  # type: ignore[arg-type]
            (job,) = [j.decode() for j in set(redis.zrange(queue, 0, -1)) - before]  # type: ignore[arg-type]
        # The client left while its job waited behind the running one.
        until(lambda: redis.zscore("arq:abort", job) is not None)  # the gateway asked arq to drop it
    # The running stream's client left too: its slot frees.
    assert httpx.post(run_url(narrow), json={"prompt": "Hi", "max_tokens": 2}, timeout=30).status_code == 200
    until(lambda: not redis.zscore(queue, job))  # dropped from the queue...
    assert not redis.exists(events_key(job)), "...without ever starting"
    redis.close()


@contextlib.contextmanager
def leaving_client(url: str, body: dict[str, object]) -> Iterator[None]:
    """A client that sends its request and, once the block is done, hangs up without reading
    the answer: at the moment the test chooses, not after a timer."""
    parts = urllib.parse.urlsplit(url)
    payload = json.dumps(body).encode()
    head = f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
    head += f"Content-Length: {len(payload)}\r\n\r\n"
    with socket.create_connection((parts.hostname, parts.port or 80)) as connection:
        connection.sendall(head.encode() + payload)
        yield


def until(condition: Callable[[], object], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.02)
