"""Routing with two real CPU workers: an adapter's requests go to the worker that holds it; when
that worker dies they go to the other, which loads it, and none is lost; a session stays on one
worker. And the router alone, on adverts it is given: a new adapter's requests stay where the
first was sent while no advert lists it yet."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import httpx
import msgspec
import pytest
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from gateway.routing import JobRouter
from sluice.config import load_settings
from sluice.contract import EVENT_FIELD, AdapterRef, Started, WorkerInfo, decode_event, events_key, queue_key
from sluice.redis_server import EmbeddedRedis, free_port
from sluice.registry import beat
from tests.conftest import MODEL, start, stop, wait_until_ready
from tests.test_lora_engine import make_adapter
from worker.engines.transformers_engine import SMOLLM2_ID, resolve_weights

ACCOUNT = "acct-route"


@dataclass
class Pair:
    url: str
    key: str
    redis: Redis
    workers: dict[str, subprocess.Popen[bytes]]  # worker id -> its process

    def ask(self, **extra: object) -> tuple[str, str]:
        """A small greedy request: the id of the worker that ran it, and the answer."""
        headers = {"authorization": f"Bearer {self.key}"}
        headers |= {"x-session-affinity": str(extra.pop("session"))} if "session" in extra else {}
        body = {"prompt": "Name a fruit.", "max_tokens": 4, "temperature": 0, **extra}
        url = f"{self.url}/client/v4/accounts/{ACCOUNT}/ai/run/{MODEL}"
        response = httpx.post(url, json=body, headers=headers, timeout=120)
        assert response.status_code == 200, response.text
        entries = cast(
            list[tuple[bytes, dict[bytes, bytes]]],
            self.redis.xrange(events_key(response.headers["x-request-id"])),
        )
        started = [e for e in (decode_event(f[EVENT_FIELD]) for _, f in entries) if isinstance(e, Started)]
        answer: str = response.json()["result"]["response"]
        return started[-1].worker, answer


def worker_id_of(log: Path, process: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + 120
    while not (found := re.search(r"worker (\w+) serving", log.read_text(errors="replace"))):
        assert process.poll() is None, f"worker exited: {log.read_text()}"
        assert time.monotonic() < deadline, "the worker never started serving"
        time.sleep(0.1)
    return found.group(1)


@pytest.fixture(scope="module")
def pair(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    logs = tmp_path_factory.mktemp("routing-logs")
    redis_url = redis_server.url.rsplit("/", 1)[0] + "/12"
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_url, "SLUICE_AUTH": "keys", "SLUICE_PORT": str(port)}
    env |= {"SLUICE_WORKER_METRICS_PORT": "0", "SLUICE_HEARTBEAT_TTL": "3"}
    # Two CPU workers on a 2-core machine: one torch thread each, not two each fighting for cores.
    env |= {"OMP_NUM_THREADS": "1"}
    env["SLUICE_ADAPTER_DIR"] = str(tmp_path_factory.mktemp("adapters"))
    sluice = [sys.executable, "-m", "sluice"]
    created = subprocess.run(
        [*sluice, "keys", "create", "--account", ACCOUNT], env=env, capture_output=True, text=True, check=True
    )
    folder = make_adapter(
        resolve_weights(SMOLLM2_ID, Path(load_settings().cache_dir)),
        tmp_path_factory.mktemp("a") / "a",
        1,
        ["q_proj", "v_proj"],
    )
    add = [*sluice, "lora", "add", "--account", ACCOUNT, "--name", "routed"]
    add += [
        "--config",
        str(folder / "adapter_config.json"),
        "--weights",
        str(folder / "adapter_model.safetensors"),
    ]
    subprocess.run(add, env=env, capture_output=True, text=True, check=True)
    worker_logs = [logs / "worker-1.log", logs / "worker-2.log"]
    workers = [start("worker", env, log) for log in worker_logs]
    gateway = start("gateway", env, logs / "gateway.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, [*workers, gateway])
        ids = {worker_id_of(log, w): w for log, w in zip(worker_logs, workers, strict=True)}
        with Redis.from_url(redis_url) as redis:
            yield Pair(url, created.stdout.strip().splitlines()[-1], redis, ids)
    finally:
        for process in [gateway, *workers]:
            stop(process)


def test_a_session_stays_on_one_worker(pair: Pair) -> None:
    unpinned = {pair.ask()[0] for _ in range(8)}
    assert len({pair.ask(session="conversation-1")[0] for _ in range(8)}) == 1
    print(f"without a session, 8 requests ran on {len(unpinned)} worker(s)")


def test_an_adapters_requests_follow_it_and_survive_its_worker(pair: Pair) -> None:
    _, base = pair.ask()
    holder, answer = pair.ask(lora="routed")
    assert answer != base, "the adapter was applied"
    assert {pair.ask(lora="routed") for _ in range(7)} == {(holder, answer)}, "sent to the one that holds it"
    pair.workers[holder].kill()
    pair.workers[holder].wait()
    # At once: the gateway may still route to the dead worker; recovery hands the job on.
    (other,) = set(pair.workers) - {holder}
    assert pair.ask(lora="routed") == (other, answer), "the other worker loaded it: the same answer"
    assert {pair.ask(lora="routed") for _ in range(3)} == {(other, answer)}


async def test_a_new_adapter_stays_where_it_was_sent_until_advertised(scratch_redis: AsyncRedis) -> None:
    now = 0.0
    router = JobRouter(scratch_redis, heartbeat_ttl=2, clock=lambda: now)
    adapter = AdapterRef(ACCOUNT, "ft-new")

    async def advertise(worker: str, running: int = 0, adapters: tuple[str, ...] = ()) -> None:
        info = WorkerInfo(worker, MODEL, "transformers", queue_key(MODEL), 16, 0.0, running=running)
        await beat(scratch_redis, msgspec.structs.replace(info, adapters=list(adapters)), 2)

    for worker in ("worker-a", "worker-b"):
        await advertise(worker)
    first = await router.route(MODEL, adapter, None)
    assert first is not None
    (other,) = {"worker-a", "worker-b"} - {first}
    # Its first job runs longer than a heartbeat TTL, and the adverts read when the next request
    # comes were written while it ran: busier than the other, not listing the adapter yet.
    await advertise(first, running=1)
    now += 3
    assert await router.route(MODEL, adapter, None) == first, "sent where it is loading"
    # Once advertised, the adverts decide: evicted there, it goes where there is most room.
    await advertise(first, adapters=("ft-new",))
    now += 1
    assert await router.route(MODEL, adapter, None) == first
    await advertise(first, running=1)
    now += 1
    assert await router.route(MODEL, adapter, None) == other, "no longer held there"
