"""API keys and per-key limits, against two real gateway processes sharing one Redis."""

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
from pathlib import Path

import cloudflare
import httpx
import openai
import pytest

from sluice.redis_server import EmbeddedRedis, free_port
from tests.conftest import MODEL, start, stop, wait_until_ready

ACCOUNT = "acct-a"


@dataclass
class Keyed:
    urls: list[str]  # two gateways
    env: dict[str, str]

    def run_url(self, gateway: int = 0, account: str = ACCOUNT) -> str:
        return f"{self.urls[gateway]}/client/v4/accounts/{account}/ai/run/{MODEL}"

    def sluice(self, *args: str) -> str:
        command = [sys.executable, "-m", "sluice", "keys", *args]
        return subprocess.run(command, env=self.env, capture_output=True, text=True, check=True).stdout

    def new_key(self, *limits: str, account: str = ACCOUNT) -> str:
        """A key made with the CLI (``sluice keys create``), which prints it once, last."""
        return self.sluice("create", "--account", account, *limits).strip().splitlines()[-1]


@pytest.fixture(scope="module")
def keyed(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keyed]:
    logs = tmp_path_factory.mktemp("keys-logs")
    env = {**os.environ, "REDIS_URL": redis_server.url.rsplit("/", 1)[0] + "/5", "SLUICE_AUTH": "keys"}
    env["SLUICE_MODELS"] = json.dumps([{"name": MODEL, "engine": "synthetic", "model": "synthetic"}])
    env["SLUICE_WORKER_METRICS_PORT"] = "0"
    ports = [free_port(), free_port()]
    processes = [start("worker", env, logs / "worker.log")]
    processes += [start("gateway", {**env, "SLUICE_PORT": str(p)}, logs / f"gateway-{p}.log") for p in ports]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    try:
        for url in urls:
            wait_until_ready(url, processes)
        yield Keyed(urls, env)
    finally:
        for process in processes:
            stop(process)


def past_first_frame(response: httpx.Response) -> Iterator[str]:
    """The stream's lines after its first frame. Keep the result while the stream must stay open:
    a line iterator that is dropped closes the connection, and the server then ends the request."""
    lines = response.iter_lines()
    for line in lines:
        if line.startswith("data: "):
            break
    return lines


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def ask(url: str, key: str, **body: object) -> httpx.Response:
    return httpx.post(url, json={"prompt": "Hi", "max_tokens": 1, **body}, headers=bearer(key), timeout=30)


def test_a_missing_or_unknown_key_is_401_in_each_apis_envelope(keyed: Keyed) -> None:
    for headers in ({}, bearer("sk-sluice-not-a-real-key")):
        native = httpx.post(keyed.run_url(), json={"prompt": "Hi"}, headers=headers, timeout=10)
        assert native.status_code == 401
        assert native.json()["errors"] == [{"code": 10000, "message": "Authentication error"}]
    client = openai.OpenAI(api_key="sk-sluice-not-a-real-key", base_url=f"{keyed.urls[0]}/v1", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}])
    assert httpx.get(f"{keyed.urls[0]}/readyz", timeout=10).status_code == 200, "probes need no key"


def test_a_key_works_for_its_own_account_only(keyed: Keyed) -> None:
    key = keyed.new_key()
    sdk = cloudflare.Cloudflare(api_token=key, base_url=f"{keyed.urls[0]}/client/v4", max_retries=0)
    answer = sdk.ai.run(MODEL, account_id=ACCOUNT, prompt="Hi", max_tokens=3)
    assert answer is not None
    other = ask(keyed.run_url(account="acct-b"), key)
    assert other.status_code == 403
    assert other.json()["errors"][0]["code"] == 10000


def test_keys_are_listed_by_id_and_revoked(keyed: Keyed) -> None:
    key = keyed.new_key("--rpm", "50")
    listing = keyed.sluice("list")
    assert key not in listing, "a key is shown once, at creation"
    (key_id,) = [line.split()[1] for line in listing.splitlines() if " 50 " in line and "key_" in line][-1:]
    keyed.sluice("revoke", key_id)
    assert ask(keyed.run_url(1), key).status_code == 401


def rejected(keyed: Keyed, reason: str) -> float:
    """``sluice_rejections_total`` for ``reason``, summed over both gateways' /metrics."""
    pattern = re.compile(rf'^sluice_rejections_total\{{reason="{reason}"\}} (\S+)$', re.MULTILINE)
    scrapes = [httpx.get(f"{url}/metrics", timeout=10).text for url in keyed.urls]
    return sum(float(m.group(1)) for s in scrapes if (m := pattern.search(s)))


def test_requests_per_minute_hold_exactly_across_two_gateways(keyed: Keyed) -> None:
    key = keyed.new_key("--rpm", "10")
    before = rejected(keyed, "rate_requests")
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: ask(keyed.run_url(i % 2), key), range(20)))
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] * 10 + [429] * 10, "exactly the limit, not twice it"
    assert rejected(keyed, "rate_requests") - before == 10, "each refusal is counted, by its reason"
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.json()["errors"][0]["code"] == 3021
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    admitted = [a for a in answers if a.status_code == 200]
    left = sorted(int(a.headers["x-ratelimit-remaining-requests"]) for a in admitted)
    assert left == list(range(10)), "every admitted response says how many are left"
    assert all(a.headers["x-ratelimit-limit-requests"] == "10" for a in answers)


def test_tokens_are_reserved_for_a_stream_and_given_back_when_it_ends_early(keyed: Keyed) -> None:
    key = keyed.new_key("--tpm", "1100")
    body = {"prompt": "Hi", "stream": True, "max_tokens": 1000}  # 10 s of tokens: left early below
    with httpx.stream("POST", keyed.run_url(0), json=body, headers=bearer(key), timeout=30) as first:
        assert first.status_code == 200
        assert int(first.headers["x-ratelimit-remaining-tokens"]) < 100
        lines = past_first_frame(first)  # held: the stream stays open while this is
        second = ask(keyed.run_url(1), key, max_tokens=200)
        assert second.status_code == 429, "the stream's reservation holds on the other gateway"
        assert second.json()["errors"][0]["code"] == 3021
        assert int(second.headers["retry-after"]) >= 1
        first.close()  # the client leaves early
        del lines
    # The first stream ended after a frame: its reservation shrinks to what it used.
    deadline = time.monotonic() + 10
    while (third := ask(keyed.run_url(1), key, max_tokens=200)).status_code == 429:
        assert time.monotonic() < deadline, "the unused reservation was never given back"
        time.sleep(0.05)
    assert third.status_code == 200


def test_a_key_with_one_concurrent_request_sends_the_next_once_it_has_the_answer(keyed: Keyed) -> None:
    """The worker frees the key's slot in the write that ends the answer, so a client that
    waits for each answer before asking again is never refused for concurrency."""
    key = keyed.new_key("--concurrency", "1")
    for gateway in [0, 1, 0, 1, 0, 1]:
        with httpx.stream(
            "POST",
            keyed.run_url(gateway),
            json={"prompt": "Hi", "stream": True, "max_tokens": 3},
            headers=bearer(key),
            timeout=30,
        ) as streamed:
            assert streamed.status_code == 200
            assert list(streamed.iter_lines())[-2:] == ["data: [DONE]", ""]
        assert ask(keyed.run_url(1 - gateway), key).status_code == 200


def test_the_openai_sdk_gets_rate_limit_errors_and_retries_after_the_time_it_is_given(keyed: Keyed) -> None:
    key = keyed.new_key("--concurrency", "1")
    client = openai.OpenAI(api_key=key, base_url=f"{keyed.urls[0]}/v1", max_retries=0)
    question = [{"role": "user", "content": "Hi"}]
    holder = {"prompt": "Hi", "stream": True, "max_tokens": 2000}  # holds the one slot until it leaves
    with httpx.stream("POST", keyed.run_url(1), json=holder, headers=bearer(key), timeout=30) as held:
        holding = past_first_frame(held)  # held: the stream stays open while this is
        with pytest.raises(openai.RateLimitError) as raised:
            client.chat.completions.create(model=MODEL, messages=question, max_tokens=1)  # type: ignore[arg-type]
        assert raised.value.response.headers["retry-after"] == "1"
        del holding
    # The holder has left: its slot frees, and a client that retries as told gets its answer.
    patient = client.with_options(max_retries=3)
    answer = patient.chat.completions.create(model=MODEL, messages=question, max_tokens=1)  # type: ignore[arg-type]
    assert answer.choices[0].message.content is not None


def test_the_cloudflare_sdk_retries_a_429_then_succeeds(keyed: Keyed) -> None:
    key = keyed.new_key("--concurrency", "1")
    sdk = cloudflare.Cloudflare(api_token=key, base_url=f"{keyed.urls[0]}/client/v4", max_retries=3)
    holder = {"prompt": "Hi", "stream": True, "max_tokens": 100}
    with httpx.stream("POST", keyed.run_url(1), json=holder, headers=bearer(key), timeout=30) as held:
        holding = past_first_frame(held)
        answer = sdk.ai.run(MODEL, account_id=ACCOUNT, prompt="Hi", max_tokens=3)
        assert list(holding), "the holder was served to its end meanwhile"
    assert answer is not None


def test_a_long_stream_keeps_its_slot_and_a_killed_gateways_slot_frees_in_seconds(
    keyed: Keyed, tmp_path: Path
) -> None:
    """A request in flight holds one of its key's concurrent slots on a lease its gateway renews
    (every heartbeat TTL, lasting three): for as long as it streams, however long; and once its
    gateway is killed, for at most a lease more, not until the request's deadline (minutes)."""
    redis_url = keyed.env["REDIS_URL"].rsplit("/", 1)[0] + "/14"  # a stack of its own: TTL 2 s, 6 s leases
    env = {**keyed.env, "REDIS_URL": redis_url, "SLUICE_HEARTBEAT_TTL": "2"}
    command = [sys.executable, "-m", "sluice", "keys", "create", "--account", ACCOUNT, "--concurrency", "1"]
    key = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout.split()[-1]
    ports = [free_port(), free_port()]
    processes = [start("worker", env, tmp_path / "worker.log")]
    processes += [
        start("gateway", {**env, "SLUICE_PORT": str(p)}, tmp_path / f"gateway-{p}.log") for p in ports
    ]
    doomed, survivor = (f"http://127.0.0.1:{p}/client/v4/accounts/{ACCOUNT}/ai/run/{MODEL}" for p in ports)
    try:
        for port in ports:
            wait_until_ready(f"http://127.0.0.1:{port}", processes)
        body = {"prompt": "Hi", "stream": True, "max_tokens": 2000}  # 20 s of tokens
        with httpx.stream("POST", doomed, json=body, headers=bearer(key), timeout=30) as held:
            holding = past_first_frame(held)
            streamed = time.monotonic()
            while time.monotonic() - streamed < 7.5:  # past a lease (6 s) that was not renewed
                assert next(holding, None) is not None, "the stream ended early"
            assert ask(survivor, key).status_code == 429, "a streaming request lost its slot"
            processes[1].kill()
            processes[1].wait()
        killed = time.monotonic()
        while (reply := ask(survivor, key)).status_code == 429:
            assert time.monotonic() - killed < 15, "the killed gateway's request kept its slot"
            time.sleep(0.2)
        assert reply.status_code == 200
    finally:
        for process in processes:
            stop(process)
