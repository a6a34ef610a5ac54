"""The Workers AI → SGLang mapping table: every input in Workers AI's ranges becomes parameters
SGLang's ``SamplingParams.verify`` accepts, with the same meaning."""

from __future__ import annotations

import json
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.contract import Function, GenerationInput, NamedToolChoice, Tool
from sluice.contract import FunctionName as Name
from worker.engines.sglang.params import generate_request, sampling_params
from worker.engines.sglang.protocol import SamplingParams
from worker.prompt import prepare

WEATHER = Tool(type="function", function=Function("get_weather", "Weather", {"type": "object"}))


def mapped(**fields: object) -> SamplingParams:
    return sampling_params(prepare(GenerationInput(prompt="Hi", **fields)))  # type: ignore[arg-type]


def test_defaults_send_max_tokens_and_temperature_only() -> None:
    # SGLang's own max_new_tokens default is 128; Workers AI's is 256 and must be sent.
    assert mapped() == SamplingParams(max_new_tokens=256, temperature=0.6)


def test_top_p_zero_means_greedy_and_one_or_more_means_off() -> None:
    assert (mapped(top_p=0).temperature, mapped(top_p=0).top_p) == (0.0, None)
    assert mapped(top_p=1).top_p is None
    assert mapped(top_p=1.7).top_p is None
    assert mapped(top_p=0.4).top_p == 0.4


def test_a_repetition_penalty_of_zero_or_one_is_off() -> None:
    assert mapped(repetition_penalty=0).repetition_penalty is None
    assert mapped(repetition_penalty=1).repetition_penalty is None
    assert mapped(repetition_penalty=1.3).repetition_penalty == 1.3


def test_seed_becomes_sampling_seed() -> None:
    assert mapped(seed=42).sampling_seed == 42


def test_tools_keep_the_python_tag_and_a_forced_call_is_a_schema() -> None:
    assert mapped().skip_special_tokens is True
    assert mapped(tools=[WEATHER]).skip_special_tokens is False
    forced = mapped(tools=[WEATHER], tool_choice=NamedToolChoice(Name("get_weather")))
    assert forced.json_schema is not None
    assert json.loads(forced.json_schema)["properties"]["name"] == {"const": "get_weather"}


def test_the_request_carries_ids_rid_stream_and_adapter() -> None:
    request = prepare(GenerationInput(prompt="Hi", lora="support-bot"))
    body = generate_request("job:2", [1, 2, 3], request, lora="ft-1234")
    # The adapter's name on the server is its finetune id, not the name the client used.
    assert (body.input_ids, body.rid, body.stream, body.lora_path) == ([1, 2, 3], "job:2", True, "ft-1234")
    assert generate_request("job:3", [1], prepare(GenerationInput(prompt="Hi"))).lora_path is None


def unit(low: float, high: float) -> st.SearchStrategy[float]:
    return st.floats(low, high, allow_nan=False)


@settings(derandomize=True, max_examples=300, deadline=None)
@given(
    max_tokens=st.integers(1, 8000),
    temperature=unit(0, 5),
    top_p=st.none() | unit(0, 2),
    top_k=st.none() | st.integers(1, 50),
    repetition_penalty=st.none() | unit(0, 2),
    frequency_penalty=st.none() | unit(0, 2),
    presence_penalty=st.none() | unit(0, 2),
)
def test_every_workers_ai_input_passes_sglangs_verify(**fields: object) -> None:
    p = mapped(**fields)
    # The bounds of SamplingParams.verify() in SGLang 0.5 (reference/sglang-and-arq.md §3).
    assert p.max_new_tokens >= 1
    assert p.temperature is None or (p.temperature >= 0 and math.isfinite(p.temperature))
    assert p.top_p is None or 0 < p.top_p <= 1
    assert p.top_k is None or p.top_k == -1 or p.top_k >= 1
    assert p.repetition_penalty is None or 0 < p.repetition_penalty <= 2
    for penalty in (p.frequency_penalty, p.presence_penalty):
        assert penalty is None or -2 <= penalty <= 2
