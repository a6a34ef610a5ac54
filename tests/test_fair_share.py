"""A flood from one account does not hold back another's requests: through a real gateway and
worker, a quiet key's request starts within one round of the worker's slots, while the flood
it arrived behind takes seconds more to drain."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import cast

import httpx
import pytest
from redis import Redis

from sluice.contract import EVENT_FIELD, Started, decode_event, events_key
from sluice.ids import issued_at
from sluice.redis_server import EmbeddedRedis, free_port
from tests.conftest import MODEL, start, stop, wait_until_ready

SLOTS = 2
FLOOD = 60
#: Each flood job: 10 tokens at 50 tokens/s, so the flood takes FLOOD / SLOTS * 0.2 s = 6 s.
FLOOD_BODY = {"prompt": "Hi", "max_tokens": 10}


@dataclass
class Shared:
    url: str
    redis: Redis
    flooder: str  # keys of two accounts
    quiet: str

    def run_url(self, account: str) -> str:
        return f"{self.url}/client/v4/accounts/{account}/ai/run/{MODEL}"


@pytest.fixture(scope="module")
def shared(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    logs = tmp_path_factory.mktemp("fair-share-logs")
    redis_url = redis_server.url.rsplit("/", 1)[0] + "/8"
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_url, "SLUICE_AUTH": "keys", "SLUICE_PORT": str(port)}
    env |= {"SLUICE_WORKER_METRICS_PORT": "0", "SLUICE_WORKER_CONCURRENCY": str(SLOTS)}
    env |= {"SLUICE_SYNTHETIC_TOKENS_PER_SECOND": "50"}
    env["SLUICE_MODELS"] = json.dumps([{"name": MODEL, "engine": "synthetic", "model": "synthetic"}])

    def new_key(account: str) -> str:
        command = [sys.executable, "-m", "sluice", "keys", "create", "--account", account]
        command += ["--concurrency", "500"]  # the flood is bounded by fair share, not its key's limit
        printed = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
        return printed.strip().splitlines()[-1]

    keys = new_key("flooder"), new_key("quiet")
    processes = [start("worker", env, logs / "worker.log"), start("gateway", env, logs / "gateway.log")]
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, processes)
        with Redis.from_url(redis_url) as redis:
            yield Shared(url, redis, *keys)
    finally:
        for process in processes:
            stop(process)


def waiting(url: str) -> float:
    scrape = httpx.get(f"{url}/metrics", timeout=10).text
    match = re.search(r'^sluice_queue_depth\{queue="[^"]+"\} (\S+)$', scrape, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def started_at(redis: Redis, job_id: str) -> float:
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], redis.xrange(events_key(job_id), count=1))
    (_, fields), *_ = entries
    event = decode_event(fields[EVENT_FIELD])
    assert isinstance(event, Started)
    return event.at


def test_a_flood_from_one_account_leaves_anothers_wait_bounded(shared: Shared) -> None:
    flood_headers = {"authorization": f"Bearer {shared.flooder}"}
    with ThreadPoolExecutor(FLOOD) as pool, httpx.Client(timeout=120) as http:
        flood = [
            pool.submit(http.post, shared.run_url("flooder"), json=FLOOD_BODY, headers=flood_headers)
            for _ in range(FLOOD)
        ]
        deadline = time.monotonic() + 30
        while waiting(shared.url) < FLOOD // 2:
            assert time.monotonic() < deadline, "the flood never queued up"
            time.sleep(0.02)
        asked = time.monotonic()
        quiet = http.post(
            shared.run_url("quiet"),
            json={"prompt": "Hi", "max_tokens": 1},
            headers={"authorization": f"Bearer {shared.quiet}"},
        )
        quiet_latency = time.monotonic() - asked
        flood_ids = [f.result(120).headers["x-request-id"] for f in flood]
        flood_drained = time.monotonic() - asked

    assert quiet.status_code == 200
    quiet_id = quiet.headers["x-request-id"]
    arrived, began = issued_at(quiet_id), started_at(shared.redis, quiet_id)
    assert arrived is not None
    flood_starts = [started_at(shared.redis, job_id) for job_id in flood_ids]
    # The bound: once the quiet request arrives, at most two rounds of the worker's slots start
    # first, however deep the flood is: one while the gateway admits it (its arrival is stamped
    # as it comes in, before it is queued) and the jobs the worker had already taken. In arrival
    # order about half the flood would.
    cut_in = sum(1 for at in flood_starts if arrived - 0.001 <= at < began)
    still_queued = sum(1 for at in flood_starts if at > began)
    print(f"quiet request: {quiet_latency * 1000:.0f} ms; flood drained {flood_drained:.1f} s after it")
    assert cut_in <= 2 * SLOTS, f"{cut_in} flood jobs started ahead of the quiet one"
    assert still_queued >= FLOOD // 3, "the flood was not deep enough to test anything"
    assert quiet_latency < flood_drained / 3
