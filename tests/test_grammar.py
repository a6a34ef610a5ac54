"""JSON mode and forced tool calls on the CPU engine: the real model, constrained by llguidance."""

from __future__ import annotations

import asyncio
import json

import jsonschema
import pytest
import torch

from sluice.contract import GenerationInput, JsonObject, ResponseFormat
from sluice.errors import ErrorCode, SluiceError
from tests.test_transformers_engine import PROMPTS, as_request, collect, greedy, reference
from worker.engines.transformers_engine import TransformersEngine
from worker.prompt import prepare

CITY: JsonObject = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["city", "population"],
    "additionalProperties": False,
}


def call(name: str, parameters: JsonObject) -> JsonObject:
    return {
        "type": "object",
        "properties": {"name": {"const": name}, "parameters": parameters},
        "required": ["name", "parameters"],
        "additionalProperties": False,
    }


TOOL_CALL: JsonObject = {
    "anyOf": [
        call(
            "get_weather",
            {
                "type": "object",
                "properties": {"location": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
                "required": ["location", "unit"],
            },
        ),
        call(
            "get_time",
            {"type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]},
        ),
    ]
}


async def constrained(
    engine: TransformersEngine, prompt: str | GenerationInput, schema: JsonObject
) -> tuple[str, str]:
    """The generated text and finish reason of one constrained request (a prompt runs greedy)."""
    request = greedy(prompt, 64) if isinstance(prompt, str) else prompt
    text, tokens, done = await collect(engine.submit("constrained", as_request(request, schema)))
    assert tokens == done.usage.completion_tokens
    return text, done.finish_reason


async def test_json_mode_yields_one_compact_object(engine: TransformersEngine) -> None:
    # Through the worker's own preparation: response_format json_object becomes {"type": "object"}.
    request = greedy(
        "Give me a JSON object describing a cat with its name and age.",
        64,
        response_format=ResponseFormat(type="json_object"),
    )
    text, _, done = await collect(engine.submit("json", prepare(request)))
    assert done.finish_reason == "stop"  # ended by the grammar, well before max_tokens
    assert isinstance(json.loads(text), dict)
    assert text.startswith("{")
    assert "\n" not in text


async def test_json_schema_output_validates(engine: TransformersEngine) -> None:
    text, finish = await constrained(engine, "What is the largest city of Japan and its population?", CITY)
    assert finish == "stop"
    jsonschema.validate(json.loads(text), CITY)


async def test_forced_tool_call_is_a_valid_call(engine: TransformersEngine) -> None:
    text, finish = await constrained(engine, "What is the weather like in Paris right now?", TOOL_CALL)
    assert finish == "stop"
    tool_call = json.loads(text)
    jsonschema.validate(tool_call, TOOL_CALL)
    assert tool_call["name"] in {"get_weather", "get_time"}


async def test_sampling_with_top_k_stays_in_the_grammar(engine: TransformersEngine) -> None:
    # top_k keeps the model's favourites; masking first means it keeps allowed ones only.
    for seed in (1, 2, 3):
        request = GenerationInput(
            prompt="Tell me about a city.", temperature=1, top_k=5, seed=seed, max_tokens=64
        )
        text, finish = await constrained(engine, request, CITY)
        if finish == "stop":
            jsonschema.validate(json.loads(text), CITY)
        else:  # a sampled string may run to max_tokens, but never off the grammar
            assert text.startswith('{"city": "')


async def test_invalid_schema_fails_only_its_request(engine: TransformersEngine) -> None:
    ok = greedy(PROMPTS[0], 8)
    failing = engine.submit("bad", as_request(greedy("Hi", 8), {"type": "nonsense"}))
    other = engine.submit("ok", as_request(ok))
    with pytest.raises(SluiceError) as raised:
        await collect(failing)
    assert (raised.value.status, raised.value.code) == (400, ErrorCode.BAD_INPUT)
    assert "nonsense" in str(raised.value)
    text, _, _ = await collect(other)
    assert text == reference(engine, ok)


async def test_constrained_and_free_rows_share_a_batch(engine: TransformersEngine) -> None:
    free = [greedy(PROMPTS[1], 48), greedy(PROMPTS[2])]
    prompts = ["Name a big city and its population.", "What is the weather in Oslo?"]
    schemas = [CITY, TOOL_CALL]
    results = await asyncio.gather(
        *(collect(engine.submit(f"free{i}", as_request(r))) for i, r in enumerate(free)),
        *(
            collect(engine.submit(f"json{i}", as_request(greedy(p, 64), s)))
            for i, (p, s) in enumerate(zip(prompts, schemas, strict=True))
        ),
    )
    # The masks are per row: the free rows are exactly what generate() gives alone.
    assert [text for text, _, _ in results[:2]] == [reference(engine, r) for r in free]
    for (text, _, done), schema in zip(results[2:], schemas, strict=True):
        assert done.finish_reason == "stop"
        jsonschema.validate(json.loads(text), schema)


async def test_mask_allows_only_the_grammar_and_end_only_when_complete(engine: TransformersEngine) -> None:
    assert engine.grammars is not None
    eos = engine.tokenizer.eos_token_id
    constraint = engine.grammars.constraint({"type": "object"})
    width = engine.grammars.n_vocab + 7  # logits wider than the vocabulary: the extra ids are never allowed
    logits = torch.zeros(width)
    constraint.mask(logits)
    allowed = torch.isfinite(logits).nonzero().flatten().tolist()
    assert allowed
    assert all(engine.tokenizer.decode([t]).startswith("{") for t in allowed)
    for token in engine.tokenizer.encode('{"a": 1', add_special_tokens=False):
        constraint.advance(token)
    assert not constraint.done
    logits = torch.zeros(width)
    constraint.mask(logits)
    assert logits[eos] == float("-inf")  # the object is not closed yet
    constraint.advance(engine.tokenizer.encode("}", add_special_tokens=False)[0])
    assert constraint.done
