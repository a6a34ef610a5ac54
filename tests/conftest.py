"""Real parts only: a real redis-server, real gateway and worker processes, the real model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from sluice.cli import wait_ready
from sluice.config import DEFAULT_MODELS, load_settings
from sluice.redis_server import EmbeddedRedis, free_port
from worker.engines.transformers_engine import TransformersEngine

MODEL = "@cf/meta/llama-3.1-8b-instruct"
SEED = Path(__file__).resolve().parents[2] / "shared" / "seed"


def seed_schema(name: str) -> dict[str, object]:
    """A schema from the seed (``shared/`` sits beside the checkout, in CI too)."""
    result: dict[str, object] = json.loads((SEED / name).read_text())
    return result


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as server:
        yield server


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
    """Gateway and a worker running the real CPU model."""
    yield from run_stack(redis_server.url, tmp_path_factory.mktemp("logs"))


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
