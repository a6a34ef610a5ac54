"""A real ``sluice worker --engine sglang`` between the gateway and an SGLang server (its test
double), as an operator runs it: beside a running server, or starting one as its child."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import redis

from sluice.contract import WORKERS_KEY
from sluice.redis_server import EmbeddedRedis, free_port
from tests.conftest import (
    MODEL,
    REPO,
    SGLANG_SHIM,
    SGLangDouble,
    Stack,
    run_stack,
    start,
    start_double,
    stop,
    wait_for_http,
)

STORY = "The lighthouse keeper counted ships until the fog lifted at dawn."
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.fixture(scope="module")
def double(model_dir: Path) -> Iterator[SGLangDouble]:
    double = start_double(model_dir)
    yield double
    stop(double.process)


@pytest.fixture(scope="module")
def sglang_stack(
    redis_server: EmbeddedRedis, double: SGLangDouble, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    yield from run_stack(
        redis_server.url.rsplit("/", 1)[0] + "/2",
        tmp_path_factory.mktemp("sglang-logs"),
        worker_engine="sglang",
        sglang_url=double.url,
        engine_probe_interval="0.2",
    )


def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(api_key="unused", base_url=f"{stack.url}/v1", max_retries=0)


def test_the_openai_sdk_streams_sglangs_answer(sglang_stack: Stack, double: SGLangDouble) -> None:
    double.script(text=STORY, interval=0.02)  # paced: frames the worker cannot coalesce
    stream = client(sglang_stack).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "A story?"}], stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == STORY
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 3
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_a_llama_tool_call_comes_back_as_a_tool_call(sglang_stack: Stack, double: SGLangDouble) -> None:
    # What Llama 3.1 8B writes for a JSON tool call (with <|python_tag|> kept: skip_special_tokens off).
    double.script(text='<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}')
    answer = client(sglang_stack).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER],  # type: ignore[list-item]
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.type == "function"
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris"})
    body = double.log()["requests"][-1]
    assert body["sampling_params"]["skip_special_tokens"] is False


def test_parallel_tool_calls_false_answers_with_the_first_call_only(
    sglang_stack: Stack, double: SGLangDouble
) -> None:
    calls = [f'{{"name": "get_weather", "parameters": {{"city": "{city}"}}}}' for city in ("Paris", "Rome")]
    for _ in range(3):  # one per request below
        double.script(text="; ".join(calls))
    ask = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Weather in Paris and Rome?"}],
        "tools": [WEATHER],
    }
    whole = client(sglang_stack).chat.completions.create(**ask)  # type: ignore[call-overload]
    assert len(whole.choices[0].message.tool_calls) == 2, "the model wrote two calls"
    one = client(sglang_stack).chat.completions.create(**ask, parallel_tool_calls=False)  # type: ignore[call-overload]
    ((call,),) = [one.choices[0].message.tool_calls]
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert one.choices[0].finish_reason == "tool_calls"
    chunks = list(client(sglang_stack).chat.completions.create(**ask, parallel_tool_calls=False, stream=True))  # type: ignore[call-overload]
    streamed = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or []]
    assert [(t.index, t.function.name) for t in streamed] == [(0, "get_weather")]


def test_a_client_that_leaves_aborts_the_sglang_request(sglang_stack: Stack, double: SGLangDouble) -> None:
    double.script(text=STORY * 40, interval=0.05)
    body = {"prompt": "A long story", "stream": True, "max_tokens": 2000}
    with (
        httpx.Client(timeout=30) as http,
        http.stream("POST", sglang_stack.native_url, json=body) as response,
    ):
        request_id = response.headers["cf-ai-req-id"]
        for line in response.iter_lines():
            if line.startswith("data: "):
                break  # one frame seen; now hang up
    deadline = time.monotonic() + 15
    while f"{request_id}:1" not in double.log()["abort_requests"]:
        assert time.monotonic() < deadline, "SGLang kept generating for a client that left"
        time.sleep(0.05)


# --- the worker's own SGLang ---------------------------------------------------------------------


def start_worker(redis_url: str, log: Path, *args: str, **settings: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "REDIS_URL": redis_url, "SLUICE_LOG_FORMAT": "text"}
    env["SLUICE_WORKER_METRICS_PORT"] = str(free_port())
    env["PYTHONPATH"] = os.pathsep.join([str(SGLANG_SHIM), str(REPO)])
    env.update({f"SLUICE_{name.upper()}": value for name, value in settings.items()})
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "sluice", "worker", *args], env=env, stdout=out, stderr=out
        )


def wait_registered(redis_url: str, worker: subprocess.Popen[bytes], timeout: float = 60) -> None:
    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + timeout
    try:
        while not client.zcard(WORKERS_KEY):
            assert worker.poll() is None, f"the worker exited with {worker.returncode}"
            assert time.monotonic() < deadline, "the worker never started taking jobs"
            time.sleep(0.05)
    finally:
        client.close()


@dataclass
class OwnSGLang:
    worker: subprocess.Popen[bytes]
    server: str  # where the worker's SGLang listens
    log: Path
    redis_url: str


@pytest.fixture
def own_sglang(redis_server: EmbeddedRedis, model_dir: Path, tmp_path: Path) -> Iterator[OwnSGLang]:
    """A worker that starts SGLang (here: the double, through ``python -m sglang.launch_server``)."""
    redis_url = redis_server.url.rsplit("/", 1)[0] + "/3"
    port = free_port()
    log = tmp_path / "worker.log"
    flags = ["--engine", "sglang", "--model", str(model_dir), "--", "--tp-size", "1", "--enable-lora"]
    worker = start_worker(redis_url, log, *flags, sglang_port=str(port), engine_probe_interval="0.2")
    try:
        server = f"http://127.0.0.1:{port}"
        wait_for_http(f"{server}/get_server_info", worker)
        wait_registered(redis_url, worker)
        yield OwnSGLang(worker, server, log, redis_url)
    finally:
        stop(worker)
        redis.Redis.from_url(redis_url).flushdb()


def test_the_worker_starts_sglang_with_the_operators_flags_and_stops_it_last(
    own_sglang: OwnSGLang, model_dir: Path
) -> None:
    seen = httpx.get(f"{own_sglang.server}/_log").json()
    argv = seen["argv"]
    assert argv[argv.index("--model-path") + 1] == str(model_dir)
    assert {"--enable-metrics", "--incremental-streaming-output", "--tp-size", "--enable-lora"} <= set(argv)
    own_sglang.worker.send_signal(signal.SIGTERM)
    assert own_sglang.worker.wait(30) == 0
    assert not Path(f"/proc/{seen['pid']}").exists(), "SGLang outlived its worker"


def test_a_worker_whose_sglang_dies_stops_taking_jobs_and_says_why(own_sglang: OwnSGLang) -> None:
    os.kill(httpx.get(f"{own_sglang.server}/_log").json()["pid"], signal.SIGKILL)
    assert own_sglang.worker.wait(30) == 1
    log = own_sglang.log.read_text()
    assert "the SGLang server exited with status -9" in log
    assert "stops taking jobs" in log
    assert not redis.Redis.from_url(own_sglang.redis_url).zcard(WORKERS_KEY), "still advertised as alive"


# --- SIGTERM: finish in-flight answers, or hand them back and have them answered once -------------


@dataclass
class Fleet:
    """A gateway and the workers behind it, on their own Redis database."""

    url: str
    env: dict[str, str]
    logs: Path
    redis_url: str
    gateway: subprocess.Popen[bytes]

    @property
    def native_url(self) -> str:
        return f"{self.url}/client/v4/accounts/acct/ai/run/{MODEL}"

    def worker(self, name: str, **settings: str) -> subprocess.Popen[bytes]:
        base = {"worker_engine": "sglang", "sglang_url": self.env["SLUICE_SGLANG_URL"]}
        worker = start_worker(self.redis_url, self.logs / f"{name}.log", **base, **settings)
        wait_registered(self.redis_url, worker)
        return worker


@pytest.fixture
def fleet(redis_server: EmbeddedRedis, double: SGLangDouble, tmp_path: Path) -> Iterator[Fleet]:
    redis_url = redis_server.url.rsplit("/", 1)[0] + "/4"
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_url, "SLUICE_PORT": str(port), "SLUICE_SGLANG_URL": double.url}
    env["SLUICE_AUTH"] = "open"
    gateway = start("gateway", env, tmp_path / "gateway.log")
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", gateway)
        yield Fleet(f"http://127.0.0.1:{port}", env, tmp_path, redis_url, gateway)
    finally:
        stop(gateway)
        redis.Redis.from_url(redis_url).flushdb()


def data_frames(response: httpx.Response) -> Iterator[str]:
    """The stream's ``data:`` payloads."""
    for line in response.iter_lines():
        if line.startswith("data: "):
            yield line.removeprefix("data: ")


def test_sigterm_lets_the_answers_in_flight_finish(fleet: Fleet, double: SGLangDouble) -> None:
    worker = fleet.worker("a", shutdown_grace="30")
    double.script(text=STORY * 3, interval=0.02)
    body = {"prompt": "A story", "stream": True, "max_tokens": 500}
    with httpx.Client(timeout=30) as http, http.stream("POST", fleet.native_url, json=body) as response:
        frames = data_frames(response)
        texts = [json.loads(next(frames))["response"]]
        worker.send_signal(signal.SIGTERM)  # mid-answer
        texts += [json.loads(f).get("response", "") for f in frames if f != "[DONE]"]
    assert "".join(texts) == STORY * 3
    assert worker.wait(30) == 0


def test_answers_handed_back_at_sigterm_are_answered_once(fleet: Fleet, double: SGLangDouble) -> None:
    first = fleet.worker("a", shutdown_grace="0.2")
    for _ in range(2):  # what the stopping worker starts on: long answers it cannot finish
        double.script(text=STORY * 40, interval=0.05)
    for _ in range(2):  # what the next attempt says
        double.script(text=STORY)
    with httpx.Client(timeout=60) as http:
        whole = ThreadPoolExecutor(1).submit(http.post, fleet.native_url, json={"prompt": "A story"})
        body = {"prompt": "A story", "stream": True, "max_tokens": 2000}
        with http.stream("POST", fleet.native_url, json=body) as response:
            frames = data_frames(response)
            assert json.loads(next(frames))["response"]
            deadline = time.monotonic() + 15
            while len(double.log()["requests"]) < 2:  # both jobs are running on the first worker
                assert time.monotonic() < deadline
                time.sleep(0.02)
            first.send_signal(signal.SIGTERM)
            assert first.wait(30) == 0
            second = fleet.worker("b")
            try:
                rest = list(frames)
                answer = whole.result(60)
            finally:
                stop(second)
    # The stream had shown part of the first attempt: it ends in a clear error, not a re-run.
    payloads = [json.loads(frame) for frame in rest if frame != "[DONE]"]
    (error,) = payloads[-1]["errors"]
    assert "retry" in error["message"]
    assert STORY not in "".join(p.get("response", "") for p in payloads)
    # The whole answer is the second attempt's, once.
    assert answer.status_code == 200
    assert answer.json()["result"]["response"] == STORY
