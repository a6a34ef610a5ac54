"""Processes die and Redis goes away; every accepted request still ends in an answer or a clear
error, and the next request succeeds. Real redis-server, gateway and worker processes, killed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from arq.constants import abort_jobs_ss
from redis import Redis as SyncRedis

from sluice.contract import (
    ABORTS_CHANNEL,
    WORKERS_KEY,
    Delta,
    Failed,
    Started,
    decode_event,
    events_key,
    queue_key,
)
from sluice.fairqueue import _ENQUEUE
from sluice.redis_server import EmbeddedRedis, free_port
from tests.conftest import MODEL, wait_for_http
from tests.faults import LosesOneReply, _Proxy

#: Fast failure detection, and slow tokens so that there is time to kill something mid-answer.
#: Not faster: a process whose loop stalls past the TTL (a slow, busy CI host) is taken for dead.
SETTINGS = {
    "SLUICE_MODELS": json.dumps([{"name": MODEL, "engine": "synthetic", "model": "synthetic"}]),
    "SLUICE_HEARTBEAT_TTL": "3",
    "SLUICE_SYNTHETIC_TOKENS_PER_SECOND": "20",
    "SLUICE_WORKER_METRICS_PORT": "0",
    "SLUICE_LOG_FORMAT": "text",
    "SLUICE_AUTH": "open",
}


@dataclass
class Site:
    """Redis, and the gateways and workers started against it; all stopped at the end."""

    redis: EmbeddedRedis
    logs: Path
    port: int = field(default_factory=free_port)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def native_url(self) -> str:
        return f"{self.url}/client/v4/accounts/acct/ai/run/{MODEL}"

    def _start(self, role: str, **settings: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, **SETTINGS, "REDIS_URL": self.redis.url, "SLUICE_PORT": str(self.port)}
        env.update({f"SLUICE_{k.upper()}": v for k, v in settings.items()})
        with (self.logs / f"{role}-{len(self.processes)}.log").open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "sluice", role], env=env, stdout=out, stderr=out
            )
        self.processes.append(process)
        return process

    def gateway(self) -> subprocess.Popen[bytes]:
        process = self._start("gateway")
        wait_for_http(f"{self.url}/healthz", process)
        return process

    def worker(self, **settings: str) -> subprocess.Popen[bytes]:
        process = self._start("worker", **settings)
        client = self.redis_client()
        before = set(client.zrange(WORKERS_KEY, 0, -1))  # type: ignore[arg-type]
        # It takes jobs once it has registered (by a new id: a dead one may leave meanwhile).
        until(lambda: process.poll() is not None or bool(set(client.zrange(WORKERS_KEY, 0, -1)) - before))  # type: ignore[arg-type]
        assert process.poll() is None, "the worker did not start"
        return process

    def redis_client(self) -> SyncRedis:
        return SyncRedis.from_url(self.redis.url)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    with EmbeddedRedis(appendonly=True) as server:
        site = Site(server, tmp_path)
        try:
            yield site
        finally:
            for process in site.processes:
                if process.poll() is None:
                    process.kill()
                    process.wait()


def until(condition: object, timeout: float = 40, message: str = "") -> None:
    """Poll a condition another process makes true (there is no event to wait on across processes)."""
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, message or "condition never held"
        time.sleep(0.02)


def running_jobs(site: Site) -> list[str]:
    keys: list[bytes] = site.redis_client().keys("arq:in-progress:*")  # type: ignore[assignment]
    return [key.decode().removeprefix("arq:in-progress:") for key in keys]


def attempts(site: Site, job_id: str) -> list[int]:
    entries: list[Any] = site.redis_client().xrange(events_key(job_id))  # type: ignore[assignment]
    return [e.attempt for _, f in entries if isinstance(e := decode_event(f[b"e"]), Started)]


def frames(response: httpx.Response) -> Iterator[dict[str, object]]:
    for line in response.iter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            yield json.loads(line.removeprefix("data: "))


def ask(site: Site, max_tokens: int = 20) -> httpx.Response:
    return httpx.post(site.native_url, json={"prompt": "Hello there", "max_tokens": max_tokens}, timeout=60)


def test_a_killed_workers_jobs_run_again_on_another_worker(site: Site) -> None:
    site.gateway()
    doomed = site.worker(worker_concurrency="1")
    with ThreadPoolExecutor(3) as pool:
        answers = [pool.submit(ask, site, 40) for _ in range(3)]  # one runs, two wait in the queue
        until(lambda: len(running_jobs(site)) == 1, message="no job started")
        doomed.kill()
        (job_id,) = running_jobs(site)  # read after the kill: the one it died with
        site.worker()
        responses = [answer.result(60) for answer in answers]
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert all(r.json()["result"]["usage"]["completion_tokens"] == 40 for r in responses)
    # Attempt 1 may have been killed before it said so; attempt 2 is the one that answered.
    assert attempts(site, job_id)[-1] == 2, "the killed worker's job ran again, as attempt 2"
    assert ask(site).status_code == 200


def test_a_killed_workers_half_sent_stream_ends_in_an_error_at_once(site: Site) -> None:
    site.gateway()
    doomed = site.worker()
    body = {"prompt": "Hello there", "stream": True, "max_tokens": 400}
    with httpx.stream("POST", site.native_url, json=body, timeout=60) as response:
        received = frames(response)
        assert next(received)["response"]
        doomed.kill()  # and no other worker is left: the gateway's own recovery must notice
        rest = list(received)
    errors = rest[-1]["errors"]
    assert isinstance(errors, list)
    assert "retry" in errors[0]["message"]
    assert sum(len(str(f.get("response", ""))) for f in rest) < 400 * 3, "no second answer"
    scrape = httpx.get(f"{site.url}/metrics", timeout=10).text
    assert 'sluice_recovered_jobs_total{action="failed"} 1.0' in scrape
    site.worker()
    assert ask(site).status_code == 200


def test_a_gateway_killed_mid_stream_has_its_job_aborted(site: Site) -> None:
    doomed = site.gateway()
    site.worker()
    body = {"prompt": "Hello there", "stream": True, "max_tokens": 2000}  # 100 s of tokens
    with httpx.stream("POST", site.native_url, json=body, timeout=60) as response:
        received = frames(response)  # held: a dropped iterator would close the connection
        next(received)
        (job_id,) = running_jobs(site)
        doomed.kill()
        del received
    until(lambda: not running_jobs(site), message="the orphaned job kept running")
    assert not site.redis_client().exists(f"arq:job:{job_id}")
    site.gateway()  # a new gateway serves at once
    assert ask(site).status_code == 200


def test_a_job_whose_gateway_died_while_it_waited_is_not_run(site: Site) -> None:
    doomed = site.gateway()
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(ask, site, 2000)  # 100 s of tokens, were it run
        queue = f"sluice:queue:{MODEL}"
        until(lambda: site.redis_client().zcard(queue) == 1, message="not queued")
        (job_id,) = [m.decode() for m in site.redis_client().zrange(queue, 0, -1)]  # type: ignore[union-attr]
        doomed.kill()
        with pytest.raises(httpx.HTTPError):
            waiting.result(60)
    until(
        lambda: not site.redis_client().keys("sluice:gateway:*"), message="the dead gateway's presence stayed"
    )
    site.worker()
    until(lambda: not site.redis_client().zcard(queue), message="the job was not taken up and ended")
    entries: list[Any] = site.redis_client().xrange(events_key(job_id))  # type: ignore[assignment]
    events = [decode_event(fields[b"e"]) for _, fields in entries]
    assert isinstance(events[-1], Failed), events
    assert sum(isinstance(e, Delta) for e in events) <= 1, "the engine ran on for nobody"


def test_clients_that_leave_after_the_first_frame_leave_nothing_running(site: Site) -> None:
    site.gateway()
    site.worker(worker_concurrency="32")
    body = {"prompt": "Hello there", "stream": True, "max_tokens": 2000}

    async def storm() -> None:
        async with httpx.AsyncClient(timeout=60) as client:

            async def leave_early() -> None:
                async with client.stream("POST", site.native_url, json=body) as response:
                    async for line in response.aiter_lines():
                        if line.startswith("data: "):
                            return

            await asyncio.gather(*(leave_early() for _ in range(30)))

    asyncio.run(storm())
    until(lambda: not running_jobs(site), message="abandoned generations kept the worker busy")
    assert ask(site).status_code == 200


def test_redis_going_away_is_a_503_and_service_resumes_when_it_returns(site: Site) -> None:
    site.gateway()
    site.worker()
    assert ask(site).status_code == 200
    site.redis.stop(keep_data=True)
    native = ask(site)
    assert native.status_code == 503
    assert native.json()["errors"][0]["message"].endswith("the request queue is unreachable.")
    openai = httpx.post(
        f"{site.url}/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]},
        timeout=30,
    )
    assert openai.status_code == 503
    assert openai.json()["error"]["message"].endswith("the request queue is unreachable.")
    assert httpx.get(f"{site.url}/readyz", timeout=10).status_code == 503
    site.redis.start()  # same port, same files: nothing was restarted but Redis
    until(lambda: httpx.get(f"{site.url}/readyz", timeout=10).status_code == 200, message="never ready again")
    assert ask(site).status_code == 200
    assert all(p.poll() is None for p in site.processes), "something crashed"


def test_jobs_queued_before_a_redis_restart_are_served_after_it(site: Site) -> None:
    site.gateway()
    with ThreadPoolExecutor(1) as pool:
        waiting: Future[httpx.Response] = pool.submit(ask, site)
        until(lambda: site.redis_client().zcard(f"sluice:queue:{MODEL}") == 1, message="not queued")
        site.redis.stop(keep_data=True)  # the append-only file holds the queued job
        site.redis.start()
        site.worker()
        answer = waiting.result(60)
    assert answer.status_code == 200
    assert answer.json()["result"]["usage"]["completion_tokens"] == 20
    assert ask(site).status_code == 200


def test_a_stream_rides_out_a_redis_restart(site: Site) -> None:
    site.gateway()
    site.worker()
    body = {"prompt": "Hello there", "stream": True, "max_tokens": 60}  # 3 s of tokens
    with httpx.stream("POST", site.native_url, json=body, timeout=60) as response:
        received = frames(response)
        texts = [str(next(received)["response"])]
        site.redis.stop(keep_data=True)  # mid-stream; append-only file kept
        time.sleep(1.0)  # the outage itself: a second of tokens with nowhere to go
        site.redis.start()
        rest = list(received)
    texts += [str(f.get("response", "")) for f in rest]
    assert not any("errors" in f for f in rest), rest[-1]
    assert len("".join(texts).split()) == 60, "every token, once"
    assert rest[-1]["usage"]["completion_tokens"] == 60  # type: ignore[index]
    assert ask(site).status_code == 200


def test_a_job_whose_worker_died_as_it_took_it_up_runs_again(site: Site) -> None:
    site.gateway()
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(ask, site)
        queue = f"sluice:queue:{MODEL}"
        until(lambda: site.redis_client().zcard(queue) == 1, message="not queued")
        (job_id,) = [m.decode() for m in site.redis_client().zrange(queue, 0, -1)]  # type: ignore[union-attr]
        # As arq leaves a job whose worker is killed between claiming it and recording it: marked
        # in progress (5 s ago, of a 610 s mark) and in no worker's running set.
        site.redis_client().psetex(f"arq:in-progress:{job_id}", 605_000, b"1")
        site.worker()
        answer = waiting.result(60)
    assert answer.status_code == 200
    assert ask(site).status_code == 200


P = TypeVar("P", bound=_Proxy)


@contextlib.contextmanager
def proxied(proxy: P) -> Iterator[P]:
    """``proxy`` serving on a loop of its own, for a test that blocks on HTTP meanwhile."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(proxy.__aenter__(), loop).result(10)
    try:
        yield proxy
    finally:
        asyncio.run_coroutine_threadsafe(proxy.__aexit__(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def test_a_request_whose_enqueue_reply_was_lost_is_refused_and_its_job_aborted(site: Site) -> None:
    """The job may well be queued (the script ran): told "not queued", the client retries, and
    the first job must not run for nobody beside the retry."""
    redis = site.redis_client()
    redis.script_load(_ENQUEUE)  # the gateway's first enqueue is then the script itself, not a miss
    with proxied(LosesOneReply(site.redis, marker=b"lost-enqueue")) as proxy:
        env = {**os.environ, **SETTINGS, "REDIS_URL": proxy.url, "SLUICE_PORT": str(site.port)}
        with (site.logs / "gateway-proxied.log").open("wb") as out:
            gateway = subprocess.Popen(
                [sys.executable, "-m", "sluice", "gateway"], env=env, stdout=out, stderr=out
            )
        site.processes.append(gateway)
        wait_for_http(f"{site.url}/healthz", gateway)
        aborts = redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        aborts.subscribe(ABORTS_CHANNEL)
        response = httpx.post(site.native_url, json={"prompt": "lost-enqueue"}, timeout=30)
        assert response.status_code == 503
        job_id = response.headers["x-request-id"]
        deadline = time.monotonic() + 10
        while aborts.get_message(timeout=max(0.0, deadline - time.monotonic())) is None:  # its own ack
            assert time.monotonic() < deadline, "an abort is announced"
        assert proxy.lost == 1
    assert redis.zscore(queue_key(MODEL), job_id) is not None, "the script had queued it"
    assert redis.zscore(abort_jobs_ss, job_id) is not None, "and it is aborted: no worker will run it"
