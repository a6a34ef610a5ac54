"""The CPU engine in-process: batching must not change any row's output."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import torch

from sluice.contract import Done, GenerationInput, JsonObject, Message
from sluice.errors import ErrorCode, SluiceError
from worker.engines.base import EngineRequest, Generation
from worker.engines.transformers_engine import TransformersEngine
from worker.prompt import prompt_ids

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three colors.",
    "Count from one to ten in words.",
]


def greedy(prompt: str, max_tokens: int = 32, **fields: Any) -> GenerationInput:
    return GenerationInput(
        messages=[Message(role="user", content=prompt)], temperature=0, max_tokens=max_tokens, **fields
    )


def as_request(request: GenerationInput, json_schema: JsonObject | None = None) -> EngineRequest:
    """What the worker hands the engine for a request without tools."""
    if request.raw:
        return EngineRequest(request, messages=None, json_schema=json_schema)
    conversation = request.messages or [Message(role="user", content=request.prompt)]
    return EngineRequest(request, [{"role": m.role, "content": m.text()} for m in conversation], json_schema)


async def collect(generation: Generation) -> tuple[str, int, Done]:
    text: list[str] = []
    tokens = 0
    while True:
        for output in await generation.next_batch():
            if isinstance(output, SluiceError):
                raise output
            if isinstance(output, Done):
                return "".join(text), tokens, output
            text.append(output.text)
            tokens += output.tokens


def reference(engine: TransformersEngine, request: GenerationInput) -> str:
    """The same model driven directly by transformers' own generate()."""
    ids = prompt_ids(engine.tokenizer, as_request(request))
    with torch.inference_mode():
        out = engine.model.generate(torch.tensor([ids]), max_new_tokens=request.max_tokens, do_sample=False)
    text: str = engine.tokenizer.decode(out[0][len(ids) :], skip_special_tokens=True)
    return text


async def test_concurrent_rows_equal_generate_alone(engine: TransformersEngine) -> None:
    requests = [greedy(p) for p in PROMPTS]
    expected = [reference(engine, r) for r in requests]
    results = await asyncio.gather(
        *(collect(engine.submit(str(i), as_request(r))) for i, r in enumerate(requests))
    )
    assert [text for text, _, _ in results] == expected
    for _text, tokens, done in results:
        assert tokens == done.usage.completion_tokens
        assert done.finish_reason == ("length" if tokens == 32 else "stop")


async def test_a_row_joining_mid_batch_is_unaffected(engine: TransformersEngine) -> None:
    long, short = greedy(PROMPTS[3], 48), greedy(PROMPTS[0])
    first = engine.submit("long", as_request(long))
    # Wait until the long row is generating, then add the other to the running batch.
    assert await first.outputs.get()
    second = engine.submit("short", as_request(short))
    (rest, _, _), (text, _, _) = await asyncio.gather(collect(first), collect(second))
    assert text == reference(engine, short)
    assert reference(engine, long).endswith(rest)


async def test_cancel_stops_the_row_and_others_go_on(engine: TransformersEngine) -> None:
    doomed = engine.submit("doomed", as_request(greedy(PROMPTS[3], 200)))
    other = engine.submit("other", as_request(greedy(PROMPTS[0])))
    assert await doomed.outputs.get()
    doomed.cancel()
    text, _, done = await collect(other)
    assert text == reference(engine, greedy(PROMPTS[0]))
    assert done.finish_reason == "stop"


async def test_max_tokens_and_stop_strings(engine: TransformersEngine) -> None:
    text, tokens, done = await collect(engine.submit("len", as_request(greedy(PROMPTS[3], 3))))
    assert (tokens, done.finish_reason, done.usage.completion_tokens) == (3, "length", 3)
    full = reference(engine, greedy(PROMPTS[3]))
    stop = full.split()[2]
    text, _, done = await collect(engine.submit("stop", as_request(greedy(PROMPTS[3], stop=[stop]))))
    assert done.finish_reason == "stop"
    assert text == full[: full.index(stop)]


async def test_raw_prompt_skips_the_chat_template(engine: TransformersEngine) -> None:
    templated = prompt_ids(engine.tokenizer, as_request(GenerationInput(prompt="Hello")))
    raw = prompt_ids(engine.tokenizer, as_request(GenerationInput(prompt="Hello", raw=True)))
    assert raw == engine.tokenizer.encode("Hello", add_special_tokens=False)
    assert len(templated) > len(raw)


async def test_seeded_sampling_is_reproducible(engine: TransformersEngine) -> None:
    request = GenerationInput(prompt="Tell me a joke.", temperature=1.0, seed=42, max_tokens=16)
    first, _, _ = await collect(engine.submit("a", as_request(request)))
    second, _, _ = await collect(engine.submit("b", as_request(request)))
    assert first == second


async def test_prompt_and_max_tokens_beyond_the_context_window_are_refused(
    engine: TransformersEngine,
) -> None:
    # 100 prompt tokens and 1 more to generate fit the 7,968-token window; 100 + 7,900 do not.
    prompt = " word" * 100
    with pytest.raises(SluiceError) as raised:
        await collect(
            engine.submit("huge", as_request(GenerationInput(prompt=prompt, raw=True, max_tokens=7900)))
        )
    assert raised.value.code is ErrorCode.CONTEXT_WINDOW
    assert raised.value.status == 413
    _, _, done = await collect(
        engine.submit("fits", as_request(GenerationInput(prompt=prompt, raw=True, max_tokens=1)))
    )
    assert done.usage.prompt_tokens == 100
