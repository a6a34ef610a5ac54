"""The four scenarios of issue 6, each measured beside its baseline in the same run."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arq.connections import RedisSettings, create_pool
from redis.asyncio import Redis

from benchmarks.client import Pool, Result, stream
from benchmarks.load import closed_loop, ms, open_loop, run
from benchmarks.machine import cpu_ticks
from benchmarks.stack import MODEL, Floor, Stack, cpu_seconds, floor, peak_rss_mib, rss_mib, running
from gateway.enqueue import JobQueue
from sluice.config import ServedModel
from sluice.contract import (
    EVENT_FIELD,
    Done,
    GenerationInput,
    Job,
    Started,
    decode_event,
    deserialize_arq_job,
    events_key,
    serialize_arq_job,
)
from sluice.keys import Limits, append_to_file, new_key
from worker.engines.base import EngineRequest
from worker.engines.synthetic import SyntheticEngine

Row = dict[str, Any]
PROMPT = "Tell me about the sea."


def run_body(max_tokens: int) -> dict[str, object]:
    return {"prompt": PROMPT, "raw": True, "stream": True, "max_tokens": max_tokens}


# --- 1. overhead ------------------------------------------------------------------------------


async def in_process(engine: SyntheticEngine, max_tokens: int) -> Result:
    """The baseline: the same synthetic engine, called directly, timed the same way."""
    request = EngineRequest(GenerationInput(prompt=PROMPT, raw=True, max_tokens=max_tokens), messages=None)
    result = Result(status=200)
    start = time.perf_counter()
    generation = engine.submit("baseline", request)
    while True:
        outputs = await generation.next_batch()
        if result.ttft != result.ttft:  # NaN: no output yet
            result.ttft = time.perf_counter() - start
        if any(isinstance(o, Done) for o in outputs):
            result.e2e = time.perf_counter() - start
            result.tokens = max_tokens
            return result


def latency_row(results: list[Result], prefix: str) -> Row:
    ok = [r for r in results if r.status == 200]
    return {
        f"{prefix}_ttft_p50_ms": ms([r.ttft for r in ok], 50),
        f"{prefix}_ttft_p95_ms": ms([r.ttft for r in ok], 95),
        f"{prefix}_ttft_p99_ms": ms([r.ttft for r in ok], 99),
        f"{prefix}_e2e_p50_ms": ms([r.e2e for r in ok], 50),
        f"{prefix}_e2e_p99_ms": ms([r.e2e for r in ok], 99),
    }


@dataclass
class Served:
    results: list[Result]
    cpu_ms_per_request: float  # the server process's, per answered request
    machine_busy: float  # fraction of all the cores busy meanwhile, load generator included


async def _served(
    url: str,
    path: str,
    body: dict[str, object],
    pid: int,
    rate: float,
    duration: float,
    headers: dict[str, str] | None = None,
) -> Served:
    """Open-loop streams from the server at ``url``, and what they cost."""
    pool = Pool(url)
    cpu, (busy, total) = cpu_seconds(pid), cpu_ticks()
    try:
        results = await open_loop(lambda: stream(url, path, body, pool=pool, headers=headers), rate, duration)
    finally:
        pool.close()
    answered = sum(r.status == 200 for r in results)
    busy_after, total_after = cpu_ticks()
    return Served(
        results,
        round((cpu_seconds(pid) - cpu) * 1000 / max(1, answered), 2),
        (busy_after - busy) / max(1, total_after - total),
    )


def _shape(results: list[Result]) -> dict[str, object]:
    """The floor's body: as many frames as the gateway wrote, over as long."""
    ok = [r for r in results if r.status == 200]
    if not ok:
        return {"frames": 1, "interval_ms": 0.0}
    frames = max(1, round(statistics.median(len(r.gaps) + 1 for r in ok)))
    return {"frames": frames, "interval_ms": statistics.median(r.e2e for r in ok) * 1000 / frames}


OVERHEAD_TOKENS, OVERHEAD_TOKENS_PER_S = 16, 1000.0


#: The worker's slots in the overhead stacks: enough that the sweep finds where the machine
#: saturates, not where one worker's slots run out (the synthetic engine's default is 16; an
#: SGLang worker takes 256 streams).
OVERHEAD_SLOTS = 256
#: Past this share of both cores busy (load generator included), or with any request unanswered,
#: a rate is saturation: queues, not Sluice, set its latency, and the sweep goes no higher.
SATURATED_BUSY = 0.9


def overhead(
    logs: Path,
    rates: list[float],
    keyed_rates: list[float],
    duration: float,
    beyond: list[float] | None = None,
) -> list[Row]:
    """Open deployment at each of ``rates`` then ``beyond``, up to the first that saturates the
    machine; at ``keyed_rates`` (those reached), each request also with an API key whose limits
    never refuse it: what authentication, admission and release add."""
    pace, slots = str(OVERHEAD_TOKENS_PER_S), str(OVERHEAD_SLOTS)
    key, keys_file = _unlimited_key(logs / "overhead-keys")
    keyed = running(
        logs / "overhead-keys",
        synthetic_tokens_per_second=pace,
        worker_concurrency=slots,
        auth="keys",
        keys_file=str(keys_file),
    )
    rows: list[Row] = []
    # Both stacks up at once (the idle one costs next to nothing), each rate measured open and
    # then with a key, back to back: the VM's speed drifts over minutes, and would otherwise
    # pass for what a key costs.
    open_ = running(logs / "overhead", synthetic_tokens_per_second=pace, worker_concurrency=slots)
    with floor(logs / "overhead") as bare, keyed as with_key, open_ as without:
        _warm(without)
        _warm(with_key, key)
        for rate in [*rates, *(beyond or [])]:
            rows.append(opened := _overhead_at(without, bare, rate, duration))
            if opened["saturated"]:
                break  # higher rates only queue longer
            if rate in keyed_rates:
                rows.append(_overhead_at(with_key, bare, rate, duration, key))
    return rows


def _warm(stack: Stack, key: str | None = None) -> None:
    """A second of traffic: Redis scripts loaded, pools' connections open, the key cached."""
    headers = {"authorization": f"Bearer {key}"} if key else None
    run(_served(stack.url, stack.run_path, run_body(OVERHEAD_TOKENS), stack.gateway_pid, 50, 1, headers))


def _unlimited_key(folder: Path) -> tuple[str, Path]:
    """A key (and the keys file that holds it) whose limits no benchmark reaches."""
    folder.mkdir(parents=True, exist_ok=True)
    key, record = new_key("bench", "benchmarks", Limits(rpm=10**9, tpm=10**12, concurrency=10**6))
    path = folder / "keys.json"
    path.unlink(missing_ok=True)
    append_to_file(path, record)
    return key, path


def _overhead_at(stack: Stack, bare: Floor, rate: float, duration: float, key: str | None = None) -> Row:
    tokens = OVERHEAD_TOKENS
    served = ServedModel(name=MODEL, engine="synthetic", model="synthetic")
    headers = {"authorization": f"Bearer {key}"} if key else None
    body = run_body(tokens)

    async def measure() -> Row:
        engine = SyntheticEngine(served, tokens_per_second=OVERHEAD_TOKENS_PER_S, first_token_delay=0.0)
        base = await open_loop(lambda: in_process(engine, tokens), rate, duration)
        sluice = await _served(stack.url, stack.run_path, body, stack.gateway_pid, rate, duration, headers)
        shape = _shape(sluice.results)
        bare_server = await _served(bare.url, "/", shape, bare.pid, rate, duration)
        ok = sum(r.status == 200 for r in sluice.results)
        row: Row = {"rate": rate, "auth": "key" if key else "open", "sent": len(sluice.results), "ok": ok}
        row["frames"] = shape["frames"]
        row["machine_busy_pct"] = round(sluice.machine_busy * 100)
        row["saturated"] = ok < len(sluice.results) or sluice.machine_busy >= SATURATED_BUSY
        # The budget: <= 1.5 ms of gateway CPU per streamed 16-token request.
        gateway_cpu, floor_cpu = sluice.cpu_ms_per_request, bare_server.cpu_ms_per_request
        row["gateway_cpu_ms_per_request"] = gateway_cpu
        row["floor_cpu_ms_per_request"] = floor_cpu
        row["gateway_cpu_vs_floor"] = round(gateway_cpu / floor_cpu, 2) if floor_cpu else None
        return row | latency_row(base, "engine") | latency_row(sluice.results, "sluice")

    row = run(measure())
    row["added_ttft_p50_ms"] = round(row["sluice_ttft_p50_ms"] - row["engine_ttft_p50_ms"], 2)
    row["added_ttft_p99_ms"] = round(row["sluice_ttft_p99_ms"] - row["engine_ttft_p99_ms"], 2)
    added = f"+{row['added_ttft_p50_ms']} ms p50, +{row['added_ttft_p99_ms']} ms p99"
    added += f", gateway {row['gateway_cpu_ms_per_request']} ms CPU/request"
    added += f" ({row['gateway_cpu_vs_floor']}x the bare server's)"
    added += f", machine {row['machine_busy_pct']} % busy"
    added += f" ({row['ok']} of {row['sent']} answered)" if row["ok"] < row["sent"] else ""
    added += ", saturated" if row["saturated"] else ""
    print(f"  overhead @ {rate:>5} req/s ({row['auth']}): {added}")
    return row


# --- 2. relay ---------------------------------------------------------------------------------


async def _kept_alive(
    stack: Stack, body: dict[str, object], concurrency: int, duration: float
) -> tuple[list[Result], float]:
    """``concurrency`` clients streaming on kept-alive connections, as the SDKs' pools keep them."""
    pool = Pool(stack.url)

    def request() -> Coroutine[Any, Any, Result]:
        return stream(stack.url, stack.run_path, body, limit=60, pool=pool)

    try:
        return await closed_loop(request, concurrency, duration)
    finally:
        pool.close()


def relay(logs: Path, concurrencies: list[int], duration: float) -> list[Row]:
    per_second, tokens = 100.0, 300
    interval_ms = 1000 / per_second
    body = run_body(tokens)
    rows: list[Row] = []
    for concurrency in concurrencies:
        with running(
            logs / f"relay-{concurrency}",
            workers=2,
            synthetic_tokens_per_second=str(per_second),
            worker_concurrency=str(concurrency),
        ) as stack:
            pids = [stack.gateway_pid, *stack.worker_pids]
            before = [cpu_seconds(pid) for pid in pids]
            results, elapsed = run(_kept_alive(stack, body, concurrency, duration))
            gateway_cpu, *worker_cpu = (cpu_seconds(pid) - b for pid, b in zip(pids, before, strict=True))
            gaps = [g for r in results for g in r.gaps]
            done = [r for r in results if r.tokens]
            relayed = max(1, sum(r.tokens for r in done))
            # Each open stream's delivered rate, times the streams open: free of the ramp at the
            # start and the stragglers at the end, which a total over wall time would count.
            per_stream = sum(r.tokens / r.e2e for r in done) / max(1, len(done))
            row: Row = {
                "concurrency": concurrency,
                "streams": len(results),
                "ok": sum(r.status == 200 for r in results),
                "tokens_per_s": round(per_stream * concurrency),
                "ideal_tokens_per_s": round(concurrency * per_second),
                "gap_p50_ms": ms(gaps, 50),
                "gap_p99_ms": ms(gaps, 99),
                "added_gap_p99_ms": round(ms(gaps, 99) - interval_ms, 2),
                "gateway_peak_rss_mib": round(peak_rss_mib(stack.gateway_pid), 1),
                # What one gateway core could relay: the budget, free of this machine's other
                # processes (workers, Redis, the load generator) competing for its two cores.
                "gateway_cpu_percent": round(gateway_cpu / elapsed * 100),
                "workers_cpu_percent": round(sum(worker_cpu) / elapsed * 100),
                "gateway_us_per_token": round(gateway_cpu / relayed * 1e6, 1),
                "tokens_per_gateway_core": round(relayed / gateway_cpu),
            }
            rows.append(row)
            relayed_at = f"{row['tokens_per_s']} tok/s, +{row['added_gap_p99_ms']} ms p99 gap"
            per_core = f"{row['tokens_per_gateway_core']} tok/s per gateway core"
            print(f"  relay @ {concurrency}: {relayed_at}, {per_core}")
    return rows


# --- 3. the CPU engine ------------------------------------------------------------------------

STORY = "Write a long story about a lighthouse keeper and a storm."


def direct_transformers(batch: int, tokens: int) -> float:
    """The baseline: SmolLM2 driven by transformers' own generate(), one batch, in this process."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sluice.config import DEFAULT_MODELS, load_settings
    from worker.engines.transformers_engine import DTYPE, resolve_weights

    path = resolve_weights(DEFAULT_MODELS[0].model, Path(load_settings().cache_dir))
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPE).eval()  # type: ignore[no-untyped-call]
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": STORY}], add_generation_prompt=True, tokenize=False
    )
    inputs = tokenizer([chat] * batch, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        model.generate(**inputs, max_new_tokens=4, do_sample=False)  # warm-up
        start = time.perf_counter()
        out = model.generate(**inputs, max_new_tokens=tokens, do_sample=False)
        elapsed = time.perf_counter() - start
    generated = out[:, inputs["input_ids"].shape[1] :]
    real = (
        int((generated != tokenizer.pad_token_id).sum())
        if tokenizer.pad_token_id is not None
        else generated.numel()
    )
    return real / elapsed


def cpu_engine(logs: Path, batches: list[int], tokens: int) -> list[Row]:
    rows: list[Row] = []
    body = {
        "messages": [{"role": "user", "content": STORY}],
        "stream": True,
        "max_tokens": tokens,
        "temperature": 0,
    }
    with running(logs / "cpu", synthetic=False) as stack:
        run(stream(stack.url, stack.run_path, {**body, "max_tokens": 4}))  # warm-up
        for batch in batches:

            async def through(batch: int = batch) -> tuple[list[Result], float]:
                start = time.perf_counter()
                results = await asyncio.gather(
                    *(stream(stack.url, stack.run_path, body) for _ in range(batch))
                )
                return list(results), time.perf_counter() - start

            results, elapsed = run(through())
            rows.append(
                {"streams": batch, "sluice_tokens_per_s": round(sum(r.tokens for r in results) / elapsed, 1)}
            )
    for row in rows:
        row["transformers_tokens_per_s"] = round(direct_transformers(row["streams"], tokens), 1)
        row["ratio"] = round(row["sluice_tokens_per_s"] / row["transformers_tokens_per_s"], 2)
        print(f"  cpu engine @ {row['streams']}: {row['sluice_tokens_per_s']} tok/s", end="")
        print(f" vs {row['transformers_tokens_per_s']} tok/s")
    return rows


# --- 4. queue pickup --------------------------------------------------------------------------


async def _pickups(redis_url: str, rate: float, count: int) -> list[float]:
    pool = await create_pool(
        RedisSettings.from_dsn(redis_url),
        job_serializer=serialize_arq_job,
        job_deserializer=deserialize_arq_job,
    )
    queue = JobQueue(pool)
    reader = Redis.from_url(redis_url)
    waits: list[float] = []

    async def one(i: int) -> None:
        job = Job(
            id=f"pickup-{i}-{time.time_ns()}",
            model=MODEL,
            input=GenerationInput(prompt="x", raw=True, max_tokens=1),
        )
        await queue.submit(job, account="bench", cost=1)
        last = b"0-0"
        while True:
            reply = await reader.xread({events_key(job.id): last}, block=5000, count=10)
            for _key, entries in reply or []:
                for entry_id, fields in entries:
                    last = entry_id
                    event = decode_event(fields[EVENT_FIELD])
                    if isinstance(event, Started):
                        waits.append(event.at - job.enqueued_at)
                        return

    tasks = []
    for i in range(count):
        tasks.append(asyncio.create_task(one(i)))
        await asyncio.sleep(1 / rate)
    await asyncio.gather(*tasks)
    await reader.aclose()
    await pool.aclose()
    return waits


def pickup(logs: Path, rates: list[float], count: int) -> list[Row]:
    rows: list[Row] = []
    with running(logs / "pickup") as stack:
        for rate in rates:
            waits = run(_pickups(stack.redis_url, rate, count))
            rows.append(
                {
                    "rate": rate,
                    "jobs": len(waits),
                    "pickup_p50_ms": ms(waits, 50),
                    "pickup_p99_ms": ms(waits, 99),
                }
            )
            p50, p99 = rows[-1]["pickup_p50_ms"], rows[-1]["pickup_p99_ms"]
            print(f"  pickup @ {rate} jobs/s: p50 {p50} ms, p99 {p99} ms")
    return rows


# --- 5. soak: nothing leaks -------------------------------------------------------------------


async def _batch(stack: Stack, count: int, concurrency: int, start: int) -> None:
    """``count`` requests, ``concurrency`` at a time: mostly whole streams, every tenth client
    hanging up after the first frame, every fifth asking for a whole (non-streamed) answer."""
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            body = run_body(16) if i % 5 else {**run_body(16), "stream": False}
            await stream(stack.url, stack.run_path, body, limit=60, leave_early=i % 10 == 3)

    await asyncio.gather(*(one(start + i) for i in range(count)))


async def _redis_footprint(redis_url: str) -> tuple[int, float]:
    redis = Redis.from_url(redis_url)
    try:
        keys: int = await redis.dbsize()
        used = (await redis.info("memory"))["used_memory"] / 2**20
        return keys, round(used, 1)
    finally:
        await redis.aclose()


def soak(logs: Path, requests: int, checkpoints: int = 5, concurrency: int = 32) -> list[Row]:
    """Memory of the gateway and the worker, and Redis's keys, across thousands of requests;
    then again once the event streams' TTL has passed."""
    stream_ttl = 5
    rows: list[Row] = []
    with running(logs / "soak", synthetic_tokens_per_second="4000", stream_ttl=str(stream_ttl)) as stack:
        (worker,) = stack.worker_pids

        def checkpoint(done: int) -> None:
            keys, used = run(_redis_footprint(stack.redis_url))
            row: Row = {
                "requests": done,
                "gateway_rss_mib": round(rss_mib(stack.gateway_pid), 1),
                "worker_rss_mib": round(rss_mib(worker), 1),
                "redis_keys": keys,
                "redis_used_mib": used,
            }
            rows.append(row)
            print(
                f"  soak @ {done}: gateway {row['gateway_rss_mib']} MiB, worker {row['worker_rss_mib']} MiB"
            )

        step = requests // checkpoints
        run(_batch(stack, 200, concurrency, 0))  # warm-up: caches and pools filled
        checkpoint(0)
        for n in range(1, checkpoints + 1):
            run(_batch(stack, step, concurrency, n * step))
            checkpoint(n * step)
        time.sleep(stream_ttl + 1)  # event streams expire; job keys are gone already
        checkpoint(checkpoints * step)
        rows[-1]["requests"] = f"{checkpoints * step} + {stream_ttl + 1} s"
    return rows


@contextmanager
def section(name: str) -> Iterator[None]:
    print(f"{name}:")
    start = time.perf_counter()
    yield
    print(f"  ({time.perf_counter() - start:.0f} s)")
