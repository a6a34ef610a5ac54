"""Real parts only: a real redis-server, real gateway and worker processes, the real model."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from redis.asyncio import Redis as AsyncRedis

from sluice.cli import wait_ready
from sluice.config import DEFAULT_MODELS, load_settings
from sluice.redis_server import EmbeddedRedis, free_port
from worker.engines.transformers_engine import SMOLLM2_ID, TransformersEngine, resolve_weights

MODEL = "@cf/meta/llama-3.1-8b-instruct"
SEED = Path(__file__).resolve().parents[2] / "shared" / "seed"


def seed_schema(name: str) -> dict[str, object]:
    """A schema from the seed. ``shared/`` sits beside the checkout, in CI too; a clone elsewhere
    has none, and the tests checked against the seed are skipped there, saying so."""
    if not (SEED / name).is_file():
        pytest.skip(f"no seed {name} at {SEED} (shared/ beside the checkout)", allow_module_level=True)
    result: dict[str, object] = json.loads((SEED / name).read_text())
    return result


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as server:
        yield server


#: The database of the tests that read and write Redis's keys directly, emptied for each test.
#: (The running stacks each have a database of their own: 0, and 1 to 14.)
SCRATCH_DB = 15


@pytest.fixture
async def scratch_redis(redis_server: EmbeddedRedis) -> AsyncIterator[AsyncRedis]:
    client = AsyncRedis.from_url(redis_server.url.rsplit("/", 1)[0] + f"/{SCRATCH_DB}")
    await client.flushdb()
    yield client
    await client.aclose()


def wait_until_ready(url: str, processes: list[subprocess.Popen[bytes]], timeout: float = 180) -> None:
    if wait_ready(url, processes, timeout):
        return
    for process in processes:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
    raise TimeoutError(f"{url} not ready within {timeout}s")


def start(role: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "sluice", role], env=env, stdout=out, stderr=out)


def stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@dataclass
class Stack:
    url: str
    redis_url: str
    logs: Path
    worker_metrics_url: str = ""

    @property
    def native_url(self) -> str:
        return f"{self.url}/client/v4/accounts/acct/ai/run/{MODEL}"


def run_stack(redis_url: str, logs: Path, **settings: str) -> Iterator[Stack]:
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_url, "SLUICE_PORT": str(port), "SLUICE_LOG_LEVEL": "info"}
    env["SLUICE_AUTH"] = "open"  # keys and limits have their own tests (test_keys.py)
    env["SLUICE_WORKER_METRICS_PORT"] = str(free_port())
    env.update({f"SLUICE_{name.upper()}": value for name, value in settings.items()})
    worker = start("worker", env, logs / "worker.log")
    gateway = start("gateway", env, logs / "gateway.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, [worker, gateway])
        metrics_url = f"http://127.0.0.1:{env['SLUICE_WORKER_METRICS_PORT']}/metrics"
        yield Stack(url=url, redis_url=redis_url, logs=logs, worker_metrics_url=metrics_url)
    finally:
        stop(gateway)
        stop(worker)


@pytest.fixture(scope="session")
def stack(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Gateway and a worker running the real CPU model; or, with ``SLUICE_TEST_URL`` (and
    ``SLUICE_TEST_REDIS_URL``), a deployment already running (``benchmarks/sglang_smoke.py``)."""
    if url := os.environ.get("SLUICE_TEST_URL"):
        yield Stack(
            url=url, redis_url=os.environ["SLUICE_TEST_REDIS_URL"], logs=tmp_path_factory.mktemp("logs")
        )
        return
    yield from run_stack(redis_server.url, tmp_path_factory.mktemp("logs"))


@pytest.fixture(scope="session")
def lone_gateway(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A gateway and no worker (all still loading, say), on a Redis database of its own: what it
    queues stays queued."""
    logs = tmp_path_factory.mktemp("lone-gateway-logs")
    port = free_port()
    redis_url = redis_server.url.rsplit("/", 1)[0] + "/11"
    env = {**os.environ, "REDIS_URL": redis_url, "SLUICE_PORT": str(port), "SLUICE_AUTH": "open"}
    env["SLUICE_MODELS"] = json.dumps([{"name": MODEL, "engine": "synthetic", "model": "synthetic"}])
    gateway = start("gateway", env, logs / "gateway.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/healthz", gateway)
        yield Stack(url=url, redis_url=redis_url, logs=logs)
    finally:
        stop(gateway)


@pytest.fixture(scope="session")
def synthetic_stack(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Gateway and a worker on the synthetic engine (fast, no model), on their own Redis database
    so their queue is not the real model's."""
    models = [{"name": MODEL, "engine": "synthetic", "model": "synthetic"}]
    yield from run_stack(
        redis_server.url.rsplit("/", 1)[0] + "/1",
        tmp_path_factory.mktemp("synthetic-logs"),
        models=json.dumps(models),
        synthetic_tokens_per_second="5000",
    )


@pytest.fixture(scope="session")
async def engine() -> AsyncIterator[TransformersEngine]:
    """The CPU engine in-process, shared by the engine and grammar tests.

    float32: batching must leave each row's greedy output bit-exact. (In bfloat16 the rounding of
    a batched matmul differs from a lone one, which can flip a near-tie deep into an answer.)
    """
    engine = TransformersEngine(DEFAULT_MODELS[0], load_settings().cache_dir, dtype=torch.float32)
    await engine.start()
    yield engine
    await engine.close()


# --- SGLang, through its test double -----------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
#: Puts the double on ``python -m sglang.launch_server`` for a worker that starts SGLang itself.
SGLANG_SHIM = REPO / "tests" / "sglang_double" / "shim"


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The CPU model's folder: its tokenizer stands in for Llama's in the SGLang tests."""
    return resolve_weights(SMOLLM2_ID, Path(load_settings().cache_dir))


@dataclass
class SGLangDouble:
    url: str
    process: subprocess.Popen[bytes]

    def script(self, **reply: object) -> None:
        """Queue the reply the next ``/generate`` streams (``tests/sglang_double/server.py``)."""
        httpx.post(f"{self.url}/_script", json=reply).raise_for_status()

    def log(self) -> dict[str, Any]:
        result: dict[str, Any] = httpx.get(f"{self.url}/_log").json()
        return result


def wait_for_http(url: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:  # not listening yet: a process offers nothing to await
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def start_double(model_dir: Path, *extra: str) -> SGLangDouble:
    port = free_port()
    command = [sys.executable, "-m", "tests.sglang_double.server", "--port", str(port)]
    process = subprocess.Popen([*command, "--tokenizer", str(model_dir), *extra], cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    wait_for_http(f"{url}/get_server_info", process)
    return SGLangDouble(url, process)


@pytest.fixture(scope="session")
def sglang_double(model_dir: Path) -> Iterator[SGLangDouble]:
    double = start_double(model_dir)
    yield double
    stop(double.process)


async def hang_up_after_first_frame(url: str, body: dict[str, object]) -> str:
    """Stream ``body`` to ``url`` and leave after the first frame; the request's id."""
    async with httpx.AsyncClient(timeout=30) as client, client.stream("POST", url, json=body) as response:
        request_id = response.headers["cf-ai-req-id"]
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                break
    return request_id


async def until_job_ends(redis_url: str, job_id: str, within: float = 15) -> None:
    """Return once arq's in-progress mark of ``job_id`` is gone (the job ended); fail after
    ``within`` seconds."""
    redis = AsyncRedis.from_url(redis_url)
    try:
        deadline = time.monotonic() + within
        while await redis.exists(f"arq:in-progress:{job_id}"):
            assert time.monotonic() < deadline, f"job {job_id} kept running"
            await asyncio.sleep(0.05)
    finally:
        await redis.aclose()
