"""The OpenAI ⇄ native translation pair, on its own: what a client sends is what the engine gets."""

from __future__ import annotations

import json

import msgspec
import pytest

from gateway.generation import Completion
from gateway.openai.chat.protocol import ChatCompletionRequest
from gateway.openai.chat.translate import ChunkWriter, to_completion, to_native
from gateway.openai.sampling import native_seed
from sluice.contract import NamedToolChoice, ToolCall, Usage
from sluice.errors import SluiceError

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def chat(**fields: object) -> ChatCompletionRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    return msgspec.json.decode(json.dumps(body), type=ChatCompletionRequest)


def test_sampling_fields_map_one_to_one() -> None:
    native = to_native(
        chat(temperature=0.2, top_p=0.9, max_completion_tokens=7, stop="END", presence_penalty=0.5)
    )
    assert (native.temperature, native.top_p, native.max_tokens) == (0.2, 0.9, 7)
    assert native.stop == ["END"]
    assert native.presence_penalty == 0.5


def test_defaults_are_the_native_defaults() -> None:
    native = to_native(chat())
    assert (native.temperature, native.max_tokens, native.stream) == (0.6, 256, False)


def test_developer_role_is_system() -> None:
    native = to_native(chat(messages=[{"role": "developer", "content": "Be brief."}]))
    assert native.messages is not None
    assert native.messages[0].role == "system"


def test_json_schema_is_unwrapped_to_the_bare_schema() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "thing", "schema": schema, "strict": True}}
    native = to_native(chat(response_format=fmt))
    assert native.response_format is not None
    assert native.response_format.json_schema == schema


def test_tools_and_named_choice_are_carried() -> None:
    native = to_native(
        chat(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    )
    assert [tool.spec().name for tool in native.tools or []] == ["get_weather"]
    assert isinstance(native.tool_choice, NamedToolChoice)


def test_tool_call_ids_survive_the_round_trip() -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
    ]
    native = to_native(chat(messages=messages))
    assert native.messages is not None
    calls = native.messages[1].tool_calls
    assert calls is not None
    assert calls[0].id == "call_1"
    assert native.messages[2].tool_call_id == "call_1"


@pytest.mark.parametrize(
    ("field", "value"),
    [("n", 3), ("logprobs", True), ("audio", {"voice": "x"}), ("logit_bias", {"1": 5}), ("functions", [])],
)
def test_fields_that_cannot_be_honoured_are_refused_by_name(field: str, value: object) -> None:
    with pytest.raises(SluiceError) as raised:
        to_native(chat(**{field: value}))
    assert raised.value.status == 400
    assert raised.value.param == field


def test_negative_penalties_are_kept_as_openai_allows() -> None:
    native = to_native(chat(frequency_penalty=-1, presence_penalty=-0.5))
    assert (native.frequency_penalty, native.presence_penalty) == (-1, -0.5)


def test_a_penalty_below_openais_range_is_refused_naming_the_field() -> None:
    body = b'{"model": "m", "messages": [{"role": "user", "content": "Hi"}], "frequency_penalty": -2.5}'
    with pytest.raises(msgspec.ValidationError, match="frequency_penalty"):
        msgspec.json.decode(body, type=ChatCompletionRequest)


def test_unknown_field_is_refused_by_decoding() -> None:
    with pytest.raises(msgspec.ValidationError, match="bogus"):
        chat(bogus=1)


def test_seeds_outside_the_native_range_are_folded_deterministically() -> None:
    assert native_seed(42) == 42
    assert native_seed(0) == native_seed(0) == 1
    assert 1 <= (native_seed(-5) or 0) <= 9_999_999_999


def test_completion_with_tool_calls() -> None:
    call = ToolCall(id="chatcmpl-tool-1", name="get_weather", arguments={"city": "Paris"})
    completion = Completion(text="", finish_reason="tool_calls", usage=Usage(3, 4, 7), tool_calls=[call])
    out = to_completion("abc", 1, "m", completion)
    message = out.choices[0].message
    assert message.content is None
    assert message.tool_calls is not None
    assert json.loads(message.tool_calls[0].function.arguments) == {"city": "Paris"}
    assert out.choices[0].finish_reason == "tool_calls"


def test_stream_chunks_share_id_and_carry_whole_calls() -> None:
    writer = ChunkWriter("abc", 1, "m")
    call = ToolCall(id="chatcmpl-tool-1", name="f", arguments={})
    chunk = writer.tool_calls([call], role=True)
    assert chunk.id == writer.finish("tool_calls").id == "chatcmpl-abc"
    (piece,) = chunk.choices[0].delta.tool_calls or []
    assert (piece.index, piece.id, piece.function.arguments) == (0, "chatcmpl-tool-1", "{}")
