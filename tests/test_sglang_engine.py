"""The SGLang engine against a server speaking SGLang's documented wire format (no GPU here)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer

from sluice.config import ServedModel, load_settings
from sluice.contract import Delta, Done, GenerationInput, Message, ResponseFormat
from sluice.errors import ErrorCode, SluiceError
from tests.conftest import SGLangDouble, start_double, stop
from worker.engines.base import AdapterFiles, EngineFailed, Output
from worker.engines.sglang import SGLangEngine
from worker.engines.sglang.engine import SGLangOptions
from worker.prompt import prepare, prompt_ids

SERVED = ServedModel(name="@cf/meta/llama-3.1-8b-instruct", engine="sglang", model="served-by-the-double")
STORY = "Once upon a time, a small fox found a lantern that glowed whenever someone told the truth."


def engine_for(url: str, **options: Any) -> SGLangEngine:
    settings = load_settings(
        environ={}, overrides={"sglang_url": url, "engine_probe_interval": 0.1, **options}
    )
    return SGLangEngine(SERVED, SGLangOptions.of(settings), max_streams=32)


@pytest.fixture(scope="module")
async def sglang(sglang_double: SGLangDouble) -> AsyncIterator[SGLangEngine]:
    engine = engine_for(sglang_double.url)
    await engine.start()
    yield engine
    await engine.close()


async def outputs(engine: SGLangEngine, rid: str, given: GenerationInput) -> list[Output]:
    generation = engine.submit(rid, prepare(given))
    seen: list[Output] = []
    while not seen or isinstance(seen[-1], Delta):
        seen += await asyncio.wait_for(generation.next_batch(), 30)
    return seen


def text_of(seen: list[Output]) -> str:
    return "".join(o.text for o in seen if isinstance(o, Delta))


def sent(double: SGLangDouble, rid: str) -> dict[str, Any]:
    body: dict[str, Any] = next(r for r in double.log()["requests"] if r["rid"] == rid)
    return body


async def test_text_streams_as_deltas_that_join_to_the_answer(
    sglang: SGLangEngine, sglang_double: SGLangDouble, model_dir: Path
) -> None:
    sglang_double.script(text=STORY)
    seen = await outputs(sglang, "job-1:1", GenerationInput(prompt="Tell me a story"))
    deltas = [o for o in seen if isinstance(o, Delta)]
    assert len(deltas) > 5, "one delta per SGLang frame, not the whole answer at the end"
    assert text_of(seen) == STORY
    done = seen[-1]
    assert isinstance(done, Done)
    assert done.finish_reason == "stop"
    story_tokens = len(Tokenizer.from_file(str(model_dir / "tokenizer.json")).encode(STORY).ids)
    assert done.usage.completion_tokens == story_tokens == sum(d.tokens for d in deltas)
    assert done.usage.prompt_tokens == len(sent(sglang_double, "job-1:1")["input_ids"])


async def test_the_prompt_is_token_ids_from_the_models_own_chat_template(
    sglang: SGLangEngine, sglang_double: SGLangDouble, model_dir: Path
) -> None:
    from transformers import AutoTokenizer

    given = GenerationInput(messages=[Message("system", "Be brief."), Message("user", "Hi there")])
    await outputs(sglang, "job-2:1", given)
    body = sent(sglang_double, "job-2:1")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert body["input_ids"] == prompt_ids(tokenizer, prepare(given))
    rendered = str(tokenizer.decode(body["input_ids"]))
    assert "<|im_start|>system\nBe brief.<|im_end|>" in rendered
    assert rendered.endswith("<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n")
    assert body["stream"] is True


async def test_sampling_parameters_reach_sglang_as_mapped(
    sglang: SGLangEngine, sglang_double: SGLangDouble
) -> None:
    given = GenerationInput(
        prompt="Hi",
        max_tokens=50,
        temperature=0.3,
        top_p=0.9,
        top_k=40,
        seed=7,
        repetition_penalty=1.1,
        frequency_penalty=0.5,
        presence_penalty=0.25,
        stop=["\n\n"],
    )
    await outputs(sglang, "job-3:2", given)
    body = sent(sglang_double, "job-3:2")
    assert body["sampling_params"] == {
        "max_new_tokens": 50,
        "temperature": 0.3,
        "top_p": 0.9,
        "top_k": 40,
        "sampling_seed": 7,
        "repetition_penalty": 1.1,
        "frequency_penalty": 0.5,
        "presence_penalty": 0.25,
        "stop": ["\n\n"],
    }


async def test_json_mode_sends_the_schema(sglang: SGLangEngine, sglang_double: SGLangDouble) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    given = GenerationInput(prompt="Where?", response_format=ResponseFormat("json_schema", schema))
    sglang_double.script(text='{"city": "Paris"}')
    seen = await outputs(sglang, "job-4:1", given)
    assert text_of(seen) == '{"city": "Paris"}'
    assert json.loads(sent(sglang_double, "job-4:1")["sampling_params"]["json_schema"]) == schema


async def test_max_tokens_ends_the_answer_with_length(
    sglang: SGLangEngine, sglang_double: SGLangDouble
) -> None:
    sglang_double.script(text=STORY)
    seen = await outputs(sglang, "job-5:1", GenerationInput(prompt="Story", max_tokens=3))
    done = seen[-1]
    assert isinstance(done, Done)
    assert (done.finish_reason, done.usage.completion_tokens) == ("length", 3)
    assert STORY.startswith(text_of(seen))
    assert 0 < len(text_of(seen)) < 20


async def test_a_stop_string_split_across_tokens_is_never_sent(
    sglang: SGLangEngine, sglang_double: SGLangDouble
) -> None:
    sglang_double.script(text="one two three STOPWORD four five")
    seen = await outputs(sglang, "job-6:1", GenerationInput(prompt="Count", stop=["STOPWORD"]))
    assert text_of(seen) == "one two three "
    assert not any("STOP" in o.text for o in seen if isinstance(o, Delta))
    assert isinstance(seen[-1], Done)
    assert seen[-1].finish_reason == "stop"


@pytest.mark.parametrize(
    ("script", "status", "code"),
    [
        ({"then": "abort", "after": 2, "message": "KV cache full"}, 503, ErrorCode.ABORTED),
        (
            {"then": "abort", "after": 0, "message": "input too long", "status_code": 400},
            400,
            ErrorCode.BAD_INPUT,
        ),
        ({"then": "error", "after": 0, "message": "Duplicate request ID detected"}, 400, ErrorCode.BAD_INPUT),
    ],
)
async def test_sglang_ending_a_request_itself_is_a_clear_error(
    sglang: SGLangEngine, sglang_double: SGLangDouble, script: dict[str, Any], status: int, code: ErrorCode
) -> None:
    sglang_double.script(text=STORY, **script)
    seen = await outputs(sglang, f"job-7-{status}-{script['then']}:1", GenerationInput(prompt="Story"))
    error = seen[-1]
    assert isinstance(error, SluiceError)
    assert (error.status, error.code) == (status, code)
    assert script["message"] in error.message
    assert error.retryable == (status >= 500)


async def test_a_prompt_over_the_context_window_never_reaches_sglang(
    sglang: SGLangEngine, sglang_double: SGLangDouble
) -> None:
    seen = await outputs(sglang, "job-8:1", GenerationInput(prompt="Hi", max_tokens=SERVED.context_window))
    error = seen[-1]
    assert isinstance(error, SluiceError)
    assert (error.status, error.code) == (413, ErrorCode.CONTEXT_WINDOW)
    assert not any(r["rid"] == "job-8:1" for r in sglang_double.log()["requests"])


async def test_cancelling_aborts_the_request_in_sglang_at_once(
    sglang: SGLangEngine, sglang_double: SGLangDouble
) -> None:
    sglang_double.script(text=STORY * 20, interval=0.05)
    generation = sglang.submit("job-9:1", prepare(GenerationInput(prompt="Long story")))
    first = await asyncio.wait_for(generation.next_batch(), 10)
    assert isinstance(first[0], Delta)
    generation.cancel()
    deadline = time.monotonic() + 10
    while "job-9:1" not in sglang_double.log()["abort_requests"]:
        assert time.monotonic() < deadline, "SGLang was never told to abort"
        await asyncio.sleep(0.02)
    while "job-9:1" not in sglang_double.log()["disconnected"]:
        assert time.monotonic() < deadline, "the stream was left open"
        await asyncio.sleep(0.02)


async def test_lora_adapters_load_and_unload(sglang: SGLangEngine, tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text('{"r": 8, "peft_type": "LORA"}')
    loaded = await sglang.client.load_lora_adapter("support-bot", str(tmp_path))
    assert loaded.success
    assert "support-bot" in (loaded.loaded_adapters or {})
    missing = await sglang.client.load_lora_adapter("ghost", str(tmp_path / "nowhere"))
    assert not missing.success
    assert "adapter_config.json" in (missing.error_message or "")
    unloaded = await sglang.client.unload_lora_adapter("support-bot")
    assert unloaded.success
    assert "support-bot" not in (unloaded.loaded_adapters or {})


async def test_sglang_going_away_mid_stream_is_an_error_and_fails_the_engine(model_dir: Path) -> None:
    double = start_double(model_dir)
    engine = engine_for(double.url)
    try:
        await engine.start()
        double.script(text=STORY, interval=0.01, then="die", after=5)
        seen = await outputs(engine, "job-10:1", GenerationInput(prompt="Story"))
        assert len([o for o in seen if isinstance(o, Delta)]) >= 1
        error = seen[-1]
        assert isinstance(error, SluiceError)
        assert (error.status, error.retryable) == (503, True)
        assert "unavailable" in error.message
        reason = await asyncio.wait_for(engine.until_failed(), 10)
        assert "health checks" in reason
    finally:
        await engine.close()
        stop(double.process)


async def test_start_waits_for_sglang_to_be_ready(model_dir: Path) -> None:
    double = start_double(model_dir, "--unready-for", "60")
    engine = engine_for(double.url, sglang_ready_timeout=0.5)
    try:
        with pytest.raises(EngineFailed, match="not ready within"):
            await engine.start()
    finally:
        await engine.close()
        stop(double.process)


async def test_a_server_sending_increments_is_read_as_increments(model_dir: Path) -> None:
    double = start_double(model_dir, "--incremental-streaming-output")
    engine = engine_for(double.url)
    try:
        await engine.start()
        double.script(text="one two three STOPWORD four", interval=0.01)
        seen = await outputs(engine, "job-11:1", GenerationInput(prompt="Count", stop=["STOPWORD"]))
        assert text_of(seen) == "one two three "
        assert isinstance(seen[-1], Done)
        double.script(text=STORY, interval=0.005)
        assert text_of(await outputs(engine, "job-12:1", GenerationInput(prompt="Story"))) == STORY
    finally:
        await engine.close()
        stop(double.process)


def adapter_folder(root: Path, name: str) -> AdapterFiles:
    folder = root / name
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8, "target_modules": ["q_proj"]}')
    return AdapterFiles(name, folder)


async def test_adapters_are_loaded_on_demand_named_in_generate_and_evicted_lru(
    sglang_double: SGLangDouble, tmp_path: Path
) -> None:
    settings = load_settings(environ={}, overrides={"sglang_url": sglang_double.url})
    engine = SGLangEngine(SERVED, SGLangOptions.of(settings), max_streams=8, max_adapters=1)
    await engine.start()
    try:
        a, b = adapter_folder(tmp_path, "ft-a"), adapter_folder(tmp_path, "ft-b")

        async def run(rid: str, adapter: AdapterFiles) -> list[Output]:
            generation = engine.submit(
                rid, dataclasses.replace(prepare(GenerationInput(prompt="Hi")), adapter=adapter)
            )
            seen: list[Output] = []
            while not seen or isinstance(seen[-1], Delta):
                seen += await asyncio.wait_for(generation.next_batch(), 30)
            return seen

        loads_before = len(sglang_double.log()["lora_loads"])
        sglang_double.script(text="one")
        sglang_double.script(text="two")
        first, second = await asyncio.gather(run("lora-1:1", a), run("lora-2:1", a))
        assert isinstance(first[-1], Done)
        assert isinstance(second[-1], Done)
        assert sent(sglang_double, "lora-1:1")["lora_path"] == "ft-a"
        assert sglang_double.log()["lora_loads"][loads_before:] == ["ft-a"], "loaded once for both"
        sglang_double.script(text="three")
        await run("lora-3:1", b)
        assert sent(sglang_double, "lora-3:1")["lora_path"] == "ft-b"
        assert set(sglang_double.log()["loras"]) == {"ft-b"}, "past its one slot, the idle adapter goes"
        broken = AdapterFiles("ft-broken", tmp_path / "nowhere")
        (failure,) = await run("lora-4:1", broken)
        assert isinstance(failure, SluiceError)
        assert failure.status == 400
        assert "cannot load" in failure.message
    finally:
        await engine.close()


async def test_an_adapter_the_server_already_holds_is_used_not_refused(
    sglang_double: SGLangDouble, tmp_path: Path
) -> None:
    """A sidecar SGLang outlives a worker restart with its adapters registered; SGLang refuses to
    load a name twice. The new worker must use it, not answer every request for it with a 400."""
    settings = load_settings(environ={}, overrides={"sglang_url": sglang_double.url})
    engine = SGLangEngine(SERVED, SGLangOptions.of(settings), max_streams=8, max_adapters=4)
    kept = adapter_folder(tmp_path, "ft-kept")
    await engine.start()
    try:
        assert (await engine.client.load_lora_adapter("ft-kept", str(kept.path))).success  # the old worker's
        sglang_double.script(text="still here")
        generation = engine.submit(
            "kept-1:1", dataclasses.replace(prepare(GenerationInput(prompt="Hi")), adapter=kept)
        )
        seen: list[Output] = []
        while not seen or isinstance(seen[-1], Delta):
            seen += await asyncio.wait_for(generation.next_batch(), 30)
        assert isinstance(seen[-1], Done), seen[-1]
        assert sent(sglang_double, "kept-1:1")["lora_path"] == "ft-kept"
    finally:
        await engine.client.unload_lora_adapter("ft-kept")
        await engine.close()
