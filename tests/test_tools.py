"""Llama 3.1 tool calling, engine-agnostic: the prompt the model reads and the calls it writes."""

from __future__ import annotations

import itertools
import json

import jsonschema
import pytest

from sluice.contract import Function, FunctionCall, FunctionName, Message, NamedToolChoice, ToolCallIn
from sluice.errors import ErrorCode, SluiceError
from worker.tools import may_be_tool_call, parse_tool_calls, to_chat, tool_call_schema

WEATHER = Function(
    name="get_weather",
    description="Weather in a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
TIME = Function(name="get_time", description="The time", parameters={"type": "object", "properties": {}})
ids = itertools.count()


def new_id() -> str:
    return f"id{next(ids)}"


def test_tools_go_in_front_of_the_first_user_turn_as_llama_writes_them() -> None:
    turns = to_chat([Message("system", "Be brief."), Message("user", "  Weather in Paris?  ")], [WEATHER])
    assert turns[0] == {"role": "system", "content": "Be brief."}
    definition = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": WEATHER.parameters,
        },
    }
    assert turns[1] == {
        "role": "user",
        "content": "Given the following functions, please respond with a JSON for a function call with its "
        "proper arguments that best answers the given prompt.\n\n"
        'Respond in the format {"name": function name, "parameters": dictionary of argument name and its '
        "value}.Do not use variables.\n\n" + json.dumps(definition, indent=4) + "\n\nWeather in Paris?",
    }


def test_a_tool_round_trip_renders_in_order() -> None:
    call = ToolCallIn(id="call_1", function=FunctionCall(name="get_weather", arguments='{"city": "Paris"}'))
    turns = to_chat(
        [
            Message("user", "Weather in Paris?"),
            Message("assistant", None, tool_calls=[call]),
            Message("tool", '{"temp": 21}', tool_call_id="call_1"),
        ],
        [],
    )
    assert turns == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": '{"name": "get_weather", "parameters": {"city": "Paris"}}'},
        {"role": "ipython", "content": '{"temp": 21}'},
    ]


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "get_weather", "parameters": {"city": "Paris"}}',
        ' <|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}<|eom_id|>',
        '{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}',
        '[{"name": "get_weather", "parameters": {"city": "Paris"}}]',
    ],
)
def test_each_call_form_parses(text: str) -> None:
    (call,) = parse_tool_calls(text, [WEATHER, TIME], new_id) or []
    assert (call.name, call.arguments) == ("get_weather", {"city": "Paris"})
    assert call.id


def test_several_calls_separated_by_semicolons() -> None:
    text = '{"name": "get_time", "parameters": {}}; {"name": "get_weather", "parameters": {"city": "Rome"}}'
    calls = parse_tool_calls(text, [WEATHER, TIME], new_id) or []
    assert [c.name for c in calls] == ["get_time", "get_weather"]
    assert len({c.id for c in calls}) == 2


@pytest.mark.parametrize(
    "text",
    [
        "The weather in Paris is sunny.",
        '{"name": "launch_rockets", "parameters": {}}',
        '{"name": "get_weather", "parameters": {"city": "Par',
        '{"name": "get_weather", "parameters": {}} and some words',
        '{"city": "Paris"}',
    ],
)
def test_anything_else_is_text(text: str) -> None:
    assert parse_tool_calls(text, [WEATHER], new_id) is None


@pytest.mark.parametrize(
    ("prefix", "held"),
    [
        ("", True),
        ("  ", True),
        ('{"na', True),
        ("<|pyth", True),
        ("<|python_tag|>{", True),
        ("The", False),
        ("I ", False),
    ],
)
def test_text_is_held_back_only_while_it_may_be_a_call(prefix: str, held: bool) -> None:
    assert may_be_tool_call(prefix) is held


def test_forced_call_schemas() -> None:
    assert tool_call_schema([WEATHER], "auto") is None
    assert tool_call_schema([WEATHER], None) is None
    named = tool_call_schema([WEATHER, TIME], NamedToolChoice(FunctionName("get_weather")))
    assert named is not None
    jsonschema.validate({"name": "get_weather", "parameters": {"city": "Oslo"}}, named)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "get_time", "parameters": {}}, named)
    required = tool_call_schema([WEATHER, TIME], "required")
    assert required is not None
    jsonschema.validate({"name": "get_time", "parameters": {}}, required)


def test_naming_an_unknown_tool_is_a_bad_request() -> None:
    with pytest.raises(SluiceError) as raised:
        tool_call_schema([WEATHER], NamedToolChoice(FunctionName("nope")))
    assert (raised.value.code, raised.value.status) == (ErrorCode.BAD_INPUT, 400)
    assert "nope" in raised.value.message
